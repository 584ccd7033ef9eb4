//! Device allocations addressed by raw pointer.
//!
//! Kernels and cuBLASLt take device addresses; keeping the address beside the owning
//! `CudaSlice` saves a lookup (and cudarc's synchronization bookkeeping) on every launch.

use std::sync::Arc;

use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtr};
use half::{bf16, f16};

use super::gemm::ElemType;
use crate::error::{Error, Result};

pub(super) fn cuda_err(e: cudarc::driver::DriverError) -> Error {
    Error::Engine(format!("CUDA: {e:?}"))
}

/// An owned device allocation and its address.
pub struct DeviceMem {
    pub slice: CudaSlice<u8>,
    pub ptr: u64,
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

    /// A copy of `bytes` on the device.
    pub fn from_host(stream: &Arc<CudaStream>, bytes: &[u8]) -> Result<DeviceMem> {
        let mem = Self::zeroed(stream, bytes.len())?;
        // SAFETY: the allocation holds at least `bytes.len()` bytes; `bytes` outlives the copy
        // because the stream is synchronized before returning.
        unsafe { result::memcpy_htod_async(mem.ptr, bytes, stream.cu_stream()) }
            .and_then(|()| stream.synchronize())
            .map_err(cuda_err)?;
        Ok(mem)
    }

    fn wrap(stream: &Arc<CudaStream>, slice: CudaSlice<u8>) -> DeviceMem {
        let ptr = {
            let (p, _sync) = slice.device_ptr(stream);
            p
        };
        DeviceMem { slice, ptr }
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.slice.len()
    }

    /// Waits for the stream, then reads the first `len` `i32` values.
    pub fn read_i32(&self, stream: &Arc<CudaStream>, len: usize) -> Result<Vec<i32>> {
        assert!(
            len * 4 <= self.bytes(),
            "read past the end of a device buffer"
        );
        let mut out = vec![0i32; len];
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
        let elem = if dtype == ElemType::F32 { 4 } else { 2 };
        assert!(
            len * elem <= self.bytes(),
            "read past the end of a device buffer"
        );
        let mut raw = vec![0u8; len * elem];
        // SAFETY: `raw` holds `len * elem` bytes and lives until the synchronize below.
        unsafe { result::memcpy_dtoh_async(&mut raw[..], self.ptr, stream.cu_stream()) }
            .and_then(|()| stream.synchronize())
            .map_err(cuda_err)?;
        Ok(match dtype {
            ElemType::F32 => bytemuck::pod_collect_to_vec(&raw),
            ElemType::Bf16 => bytemuck::pod_collect_to_vec::<u8, bf16>(&raw)
                .into_iter()
                .map(f32::from)
                .collect(),
            ElemType::F16 => bytemuck::pod_collect_to_vec::<u8, f16>(&raw)
                .into_iter()
                .map(f32::from)
                .collect(),
        })
    }
}
