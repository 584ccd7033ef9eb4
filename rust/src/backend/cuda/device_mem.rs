//! Device allocations addressed by raw pointer.
//!
//! Kernels and cuBLASLt take device addresses; keeping the address beside the owning
//! `CudaSlice` (or [`ArenaMem`]: weights and the KV pool, which can sleep) saves a lookup (and
//! cudarc's synchronization bookkeeping) on every launch.

use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr};
use half::{bf16, f16};
use rayon::prelude::*;

use super::arena::{Arena, ArenaMem};
use super::gemm::ElemType;
use crate::error::{Error, Result};

pub(super) fn cuda_err(e: cudarc::driver::DriverError) -> Error {
    Error::Engine(format!("CUDA: {e:?}"))
}

/// An owned device allocation and its address.
pub struct DeviceMem {
    pub ptr: u64,
    bytes: usize,
    _owner: Owner,
}

/// What frees a [`DeviceMem`] when it goes (held only to be dropped).
enum Owner {
    Slice { _slice: CudaSlice<u8> },
    Arena { _mem: ArenaMem },
}

/// The device address of `slice`.
pub fn slice_ptr(stream: &Arc<CudaStream>, slice: &CudaSlice<u8>) -> u64 {
    let (p, _sync) = slice.device_ptr(stream);
    p
}

impl DeviceMem {
    /// `bytes` zeroed bytes (at least one, so every buffer has an address).
    pub fn zeroed(stream: &Arc<CudaStream>, bytes: usize) -> Result<DeviceMem> {
        let slice = stream.alloc_zeros::<u8>(bytes.max(1)).map_err(|e| {
            Error::Engine(format!(
                "CUDA: cannot allocate {} MiB on the GPU: {e:?}",
                bytes >> 20
            ))
        })?;
        Ok(Self::wrap(stream, slice))
    }

    /// `bytes` zeroed bytes (at least one) in `arena`.
    pub fn in_arena(arena: &Arena, stream: &Arc<CudaStream>, bytes: usize) -> Result<DeviceMem> {
        let mem = arena.alloc(stream, bytes)?;
        Ok(DeviceMem {
            ptr: mem.ptr,
            bytes: bytes.max(1),
            _owner: Owner::Arena { _mem: mem },
        })
    }

    /// A copy of `bytes` on the device.
    pub fn from_host(stream: &Arc<CudaStream>, bytes: &[u8]) -> Result<DeviceMem> {
        Self::from_host_into(Self::zeroed(stream, bytes.len())?, stream, bytes)
    }

    /// A copy of `bytes` in `arena`.
    pub fn from_host_in(arena: &Arena, stream: &Arc<CudaStream>, bytes: &[u8]) -> Result<Self> {
        Self::from_host_into(Self::in_arena(arena, stream, bytes.len())?, stream, bytes)
    }

    fn from_host_into(mem: DeviceMem, stream: &Arc<CudaStream>, bytes: &[u8]) -> Result<Self> {
        // SAFETY: the allocation holds at least `bytes.len()` bytes; `bytes` outlives the copy
        // because the stream is synchronized before returning.
        unsafe { result::memcpy_htod_async(mem.ptr, bytes, stream.cu_stream()) }
            .and_then(|()| stream.synchronize())
            .map_err(cuda_err)?;
        Ok(mem)
    }

    fn wrap(stream: &Arc<CudaStream>, slice: CudaSlice<u8>) -> DeviceMem {
        DeviceMem {
            ptr: slice_ptr(stream, &slice),
            bytes: slice.len(),
            _owner: Owner::Slice { _slice: slice },
        }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes room for `bytes`: a new zeroed allocation of the next power of two when this one
    /// is smaller (the old one is freed in stream order). Returns whether it moved.
    pub fn grow(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> Result<bool> {
        let moved = bytes > self.bytes();
        if moved {
            *self = DeviceMem::zeroed(stream, bytes.next_power_of_two())?;
        }
        Ok(moved)
    }

    /// Waits for the stream, then reads the first `len` values of type `T`.
    pub fn read<T: bytemuck::Pod>(&self, stream: &Arc<CudaStream>, len: usize) -> Result<Vec<T>> {
        assert!(
            len * std::mem::size_of::<T>() <= self.bytes(),
            "read past the end of a device buffer"
        );
        if len == 0 {
            stream.synchronize().map_err(cuda_err)?;
            return Ok(Vec::new());
        }
        let mut out = vec![T::zeroed(); len];
        // SAFETY: `out` holds `len` values and lives until the synchronize below.
        unsafe { result::memcpy_dtoh_async(&mut out[..], self.ptr, stream.cu_stream()) }
            .and_then(|()| stream.synchronize())
            .map_err(cuda_err)?;
        Ok(out)
    }

    /// Waits for the stream, then reads the first `len` elements of `dtype` as f32.
    pub fn read_f32(
        &self,
        stream: &Arc<CudaStream>,
        dtype: ElemType,
        len: usize,
    ) -> Result<Vec<f32>> {
        Ok(match dtype {
            ElemType::F32 => self.read(stream, len)?,
            ElemType::Bf16 => self
                .read::<bf16>(stream, len)?
                .into_iter()
                .map(f32::from)
                .collect(),
            ElemType::F16 => self
                .read::<f16>(stream, len)?
                .into_iter()
                .map(f32::from)
                .collect(),
            ElemType::Fp8E4m3 | ElemType::Fp8E4m3Raw => {
                return Err(Error::Engine(
                    "activation buffers are never FP8: nothing reads one back".into(),
                ))
            }
        })
    }
}

/// Bytes per pinned staging buffer of [`Uploader`].
const STAGING_BYTES: usize = 64 << 20;

/// Host-to-device copies of weights through two pinned staging buffers: while the GPU copies
/// one buffer, host threads fill the other from the (memory-mapped) source, so reading the
/// file and the PCIe transfer overlap and the transfer runs at pinned-memory speed.
pub struct Uploader {
    staging: [cudarc::driver::PinnedHostSlice<u8>; 2],
    /// Recorded after each buffer's last copy; waited on before the buffer is refilled.
    copied: [cudarc::driver::CudaEvent; 2],
    next: usize,
}

impl Uploader {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Uploader> {
        let ctx = stream.context();
        // SAFETY: plain page-locked allocations, written by the host before each copy.
        let alloc = || unsafe { ctx.alloc_pinned::<u8>(STAGING_BYTES) }.map_err(cuda_err);
        let event = || ctx.new_event(None).map_err(cuda_err);
        Ok(Uploader {
            staging: [alloc()?, alloc()?],
            copied: [event()?, event()?],
            next: 0,
        })
    }

    /// Enqueues the copy of `src` to device address `dst`. `src` may be reused as soon as this
    /// returns; the device copy completes in stream order.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, dst: u64, src: &[u8]) -> Result<()> {
        let mut offset = 0u64;
        for chunk in src.chunks(STAGING_BYTES) {
            let i = self.next;
            self.next ^= 1;
            self.copied[i].synchronize().map_err(cuda_err)?;
            let buf = &mut self.staging[i].as_mut_slice().map_err(cuda_err)?[..chunk.len()];
            buf.par_chunks_mut(1 << 20)
                .zip(chunk.par_chunks(1 << 20))
                .for_each(|(d, s)| d.copy_from_slice(s));
            // SAFETY: `buf` is pinned and is not written again before `copied[i]` completes;
            // the destination range lies inside the caller's allocation.
            unsafe { result::memcpy_htod_async(dst + offset, &*buf, stream.cu_stream()) }
                .map_err(cuda_err)?;
            self.copied[i].record(stream).map_err(cuda_err)?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }
}
