//! Device memory whose physical backing can be dropped and restored at the same addresses, for
//! the weights and the KV pool, so that a model can sleep with its engine alive.
//!
//! An [`Arena`] reserves one range of device addresses (`cuMemAddressReserve`) and backs the
//! part in use with physical chunks (`cuMemCreate` + `cuMemMap` + `cuMemSetAccess`, CUDA's
//! virtual memory management API), added as the arena grows. [`Arena::sleep`] copies the bytes
//! in use to pinned host memory (for the weights; the KV pool's are dropped) and unmaps and
//! releases every chunk, keeping the reservation; [`Arena::wake`] creates and maps new chunks
//! at the same addresses and copies the bytes back. Every device address handed out stays
//! valid across a sleep, so the decode graphs recorded before it replay unchanged after it.
//!
//! Allocations are first-fit over the ranges freed so far, then at the top: weights are made
//! once at load, and what is freed then (a matrix quantized to FP8 leaves its bf16 copy) is
//! reused by the matrices after it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cudarc::driver::sys::{self, CUmemGenericAllocationHandle};
use cudarc::driver::{result, CudaContext, CudaStream, PinnedHostSlice};

use super::arena_space::Space;
use super::device_mem::cuda_err;
use crate::error::{Error, Result};

/// Alignment of every allocation (as `cudaMalloc`'s).
const ALIGN: usize = 256;
/// Bytes of one host↔device copy of a sleep or a wake: large copies run at the link's speed,
/// and a few of them keep the driver from splitting one huge copy on its own.
const COPY_BYTES: usize = 256 << 20;

/// One reserved address range and its physical backing. Clones share it.
#[derive(Clone)]
pub struct Arena {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    /// What the arena holds, for error messages ("weights", "KV pool").
    what: &'static str,
    base: u64,
    reserved: usize,
    /// Bytes of one physical chunk (a multiple of the allocation granularity).
    chunk_bytes: usize,
    /// The mapped chunks: chunk `i` backs `[base + i * chunk_bytes, ..)`. Empty while asleep.
    chunks: Vec<CUmemGenericAllocationHandle>,
    asleep: bool,
    /// Which offsets are in use: everything below `space.top` but its holes.
    space: Space,
    /// Whether the contents survive a sleep (weights) or are dropped (the KV pool).
    keep: bool,
    /// The pinned copy of the contents; kept after a wake so that the next sleep does not pin
    /// host memory again.
    host: Option<PinnedHostSlice<u8>>,
}

/// An allocation in an [`Arena`], returned to it on drop.
pub struct ArenaMem {
    arena: Arena,
    offset: usize,
    bytes: usize,
    pub ptr: u64,
}

impl Drop for ArenaMem {
    fn drop(&mut self) {
        self.arena.lock().free(self.offset, self.bytes);
    }
}

/// What a sleep or a wake of one arena did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    /// Device memory released (sleep) or mapped again (wake).
    pub device_bytes: usize,
    /// Bytes copied between the device and pinned host memory.
    pub copied_bytes: usize,
    /// Seconds the copy took (from its first enqueue to the stream's end).
    pub copy_seconds: f64,
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// The properties of the arena's physical memory: pinned device memory of `ordinal`.
fn alloc_prop(ordinal: usize) -> sys::CUmemAllocationProp {
    // SAFETY: the struct is plain data for which all-zero bytes are valid (null pointer, zero
    // integers, and each enum's value 0); the fields that matter are set below.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = ordinal as i32;
    prop
}

impl Arena {
    /// Reserves `reserve` bytes of addresses on `ctx`'s device (nothing is mapped yet); chunks
    /// of about `chunk_hint` bytes back it as it grows.
    pub fn new(
        ctx: &Arc<CudaContext>,
        what: &'static str,
        reserve: usize,
        chunk_hint: usize,
        keep: bool,
    ) -> Result<Arena> {
        ctx.bind_to_thread().map_err(cuda_err)?;
        let prop = alloc_prop(ctx.ordinal());
        let mut granularity = 0usize;
        // SAFETY: both pointers are to live locals of the right types.
        unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
            )
        }
        .result()
        .map_err(|e| vmm_err(what, "query the allocation granularity", e))?;
        let granularity = granularity.max(1);
        let chunk_bytes = round_up(chunk_hint.max(1), granularity);
        let reserved = round_up(reserve.max(1), chunk_bytes);
        let mut base = 0u64;
        // SAFETY: `base` is a live local; alignment 0 asks for the default (the granularity),
        // address 0 for any free range.
        unsafe { sys::cuMemAddressReserve(&mut base, reserved, 0, 0, 0) }
            .result()
            .map_err(|e| vmm_err(what, "reserve device addresses", e))?;
        Ok(Arena {
            inner: Arc::new(Mutex::new(Inner {
                ctx: ctx.clone(),
                what,
                base,
                reserved,
                chunk_bytes,
                chunks: Vec::new(),
                asleep: false,
                space: Space::default(),
                keep,
                host: None,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere while holding it; the bookkeeping is plain
        // data and every update to it is completed before anything that can fail.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `bytes` of device memory (at least one), zeroed in stream order.
    pub fn alloc(&self, stream: &Arc<CudaStream>, bytes: usize) -> Result<ArenaMem> {
        let size = round_up(bytes.max(1), ALIGN);
        let (offset, ptr) = {
            let mut a = self.lock();
            if a.asleep {
                return Err(Error::Engine(format!(
                    "the {} are asleep: nothing can be allocated in them",
                    a.what
                )));
            }
            a.ctx.bind_to_thread().map_err(cuda_err)?;
            let offset = a.place(size)?;
            (offset, a.base + offset as u64)
        };
        let mem = ArenaMem {
            arena: self.clone(),
            offset,
            bytes: size,
            ptr,
        };
        // SAFETY: the range lies inside mapped chunks of the arena and belongs to `mem` alone.
        unsafe { sys::cuMemsetD8Async(ptr, 0, size, stream.cu_stream()) }
            .result()
            .map_err(cuda_err)?;
        Ok(mem)
    }

    /// Copies the contents to pinned host memory (when they are kept) and releases every
    /// chunk; the addresses stay reserved. Waits for `stream` first. A no-op while asleep.
    pub fn sleep(&self, stream: &Arc<CudaStream>) -> Result<Moved> {
        let mut a = self.lock();
        if a.asleep {
            return Ok(Moved::default());
        }
        a.ctx.bind_to_thread().map_err(cuda_err)?;
        stream.synchronize().map_err(cuda_err)?;
        let mut moved = Moved::default();
        if a.keep && a.space.top > 0 {
            let started = Instant::now();
            moved.copied_bytes = a.copy_out(stream)?;
            moved.copy_seconds = started.elapsed().as_secs_f64();
        }
        moved.device_bytes = a.chunks.len() * a.chunk_bytes;
        a.unmap_all()?;
        a.asleep = true;
        Ok(moved)
    }

    /// Maps new chunks at the same addresses for everything below the top, then copies the
    /// kept contents back (or zeroes them: the KV pool), and waits for the copy.
    pub fn wake(&self, stream: &Arc<CudaStream>) -> Result<Moved> {
        let mut a = self.lock();
        if !a.asleep {
            return Ok(Moved::default());
        }
        a.ctx.bind_to_thread().map_err(cuda_err)?;
        let top = a.space.top;
        a.map_to(top)?;
        a.asleep = false;
        let mut moved = Moved {
            device_bytes: a.chunks.len() * a.chunk_bytes,
            ..Moved::default()
        };
        let started = Instant::now();
        if a.keep && a.space.top > 0 {
            moved.copied_bytes = a.copy_in(stream)?;
        } else {
            // SAFETY: `[base, base + top)` was just mapped and nothing else uses it yet.
            unsafe { sys::cuMemsetD8Async(a.base, 0, a.space.top, stream.cu_stream()) }
                .result()
                .map_err(cuda_err)?;
        }
        stream.synchronize().map_err(cuda_err)?;
        moved.copy_seconds = started.elapsed().as_secs_f64();
        Ok(moved)
    }
}

fn vmm_err(what: &str, doing: &str, e: cudarc::driver::DriverError) -> Error {
    Error::Engine(format!(
        "CUDA: cannot {doing} for the {what} (virtual memory management): {e:?}"
    ))
}

impl Inner {
    /// The offset of `size` free bytes: the first hole that holds them, else the top (mapping
    /// chunks up to it).
    fn place(&mut self, size: usize) -> Result<usize> {
        if let Some(offset) = self.space.take_hole(size) {
            return Ok(offset);
        }
        let offset = self.space.top;
        let top = offset + size;
        if top > self.reserved {
            return Err(Error::Engine(format!(
                "CUDA: the {} need more than the {} MiB of addresses reserved for them",
                self.what,
                self.reserved >> 20
            )));
        }
        self.map_to(top)?;
        self.space.top = top;
        Ok(offset)
    }

    /// Returns `[offset, offset + bytes)` to the arena.
    fn free(&mut self, offset: usize, bytes: usize) {
        self.space.free(offset, bytes);
    }

    /// Maps chunks until `[base, base + end)` is backed.
    fn map_to(&mut self, end: usize) -> Result<()> {
        let prop = alloc_prop(self.ctx.ordinal());
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        while self.chunks.len() * self.chunk_bytes < end {
            let at = self.base + (self.chunks.len() * self.chunk_bytes) as u64;
            let mut handle: CUmemGenericAllocationHandle = 0;
            // SAFETY: `handle` and `prop` are live locals; the size is a multiple of the
            // granularity (`chunk_bytes` was rounded to it).
            unsafe { sys::cuMemCreate(&mut handle, self.chunk_bytes, &prop, 0) }
                .result()
                .map_err(|e| {
                    Error::Engine(format!(
                        "CUDA: cannot allocate {} MiB on the GPU for the {}: {e:?}",
                        self.chunk_bytes >> 20,
                        self.what
                    ))
                })?;
            // SAFETY: `at` starts an unmapped, granularity-aligned range inside the reservation
            // (the chunks map it in order from `base`); `handle` holds `chunk_bytes`. On failure
            // the handle is released and nothing stays mapped.
            let mapped = unsafe {
                sys::cuMemMap(at, self.chunk_bytes, 0, handle, 0)
                    .result()
                    .and_then(|()| sys::cuMemSetAccess(at, self.chunk_bytes, &access, 1).result())
            };
            if let Err(e) = mapped {
                // SAFETY: unmapping a range that may not be mapped only fails; the handle is
                // ours and used nowhere else.
                unsafe {
                    let _ = sys::cuMemUnmap(at, self.chunk_bytes);
                    let _ = sys::cuMemRelease(handle);
                }
                return Err(vmm_err(self.what, "map device memory", e));
            }
            self.chunks.push(handle);
        }
        Ok(())
    }

    /// Unmaps and releases every chunk (the device memory goes back to the driver).
    fn unmap_all(&mut self) -> Result<()> {
        while let Some(handle) = self.chunks.pop() {
            let at = self.base + (self.chunks.len() * self.chunk_bytes) as u64;
            // SAFETY: the chunk was mapped at `at` by `map_to`; the stream was synchronized,
            // so no work reads it any more.
            unsafe {
                sys::cuMemUnmap(at, self.chunk_bytes)
                    .result()
                    .and_then(|()| sys::cuMemRelease(handle).result())
            }
            .map_err(|e| vmm_err(self.what, "release device memory", e))?;
        }
        Ok(())
    }

    /// Copies `[base, base + top)` to the pinned host copy (made or grown here); returns the
    /// bytes copied once the copy is done.
    fn copy_out(&mut self, stream: &Arc<CudaStream>) -> Result<usize> {
        let top = self.space.top;
        if self.host.as_ref().is_none_or(|h| h.len() < top) {
            self.host = None;
            // SAFETY: a plain page-locked allocation, written only by the copies below.
            let host = unsafe { self.ctx.alloc_pinned::<u8>(top) }.map_err(|e| {
                Error::Engine(format!(
                    "CUDA: cannot pin {} MiB of host memory for the sleeping {}: {e:?}",
                    top >> 20,
                    self.what
                ))
            })?;
            self.host = Some(host);
        }
        let base = self.base;
        let host = self.host.as_mut().expect("made above");
        let buf = &mut host.as_mut_slice().map_err(cuda_err)?[..top];
        for (i, chunk) in buf.chunks_mut(COPY_BYTES).enumerate() {
            let src = base + (i * COPY_BYTES) as u64;
            // SAFETY: `chunk` is pinned and outlives the synchronize below; the source range
            // lies below `top`, inside mapped chunks.
            unsafe { result::memcpy_dtoh_async(chunk, src, stream.cu_stream()) }
                .map_err(cuda_err)?;
        }
        stream.synchronize().map_err(cuda_err)?;
        Ok(top)
    }

    /// Enqueues the copy of the pinned host copy back to `[base, base + top)`; the caller
    /// waits for the stream.
    fn copy_in(&mut self, stream: &Arc<CudaStream>) -> Result<usize> {
        let (base, top) = (self.base, self.space.top);
        let host = self.host.as_ref().ok_or_else(|| {
            Error::Engine(format!("the sleeping {} have no host copy", self.what))
        })?;
        let buf = &host.as_slice().map_err(cuda_err)?[..top];
        for (i, chunk) in buf.chunks(COPY_BYTES).enumerate() {
            let dst = base + (i * COPY_BYTES) as u64;
            // SAFETY: `chunk` is pinned and lives in `self.host`, which the caller keeps until
            // it has synchronized the stream; the destination was just mapped.
            unsafe { result::memcpy_htod_async(dst, chunk, stream.cu_stream()) }
                .map_err(cuda_err)?;
        }
        Ok(top)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last allocation is gone (each holds the arena): release the memory and the
        // addresses. Errors cannot be reported from a destructor; the process keeps running.
        if self.ctx.bind_to_thread().is_ok() {
            // Work still enqueued may read the memory: it finishes first.
            let _ = self.ctx.synchronize();
            let _ = self.unmap_all();
            // SAFETY: the range was reserved by `Arena::new` and nothing is mapped in it now.
            unsafe {
                let _ = sys::cuMemAddressFree(self.base, self.reserved);
            }
        }
    }
}
