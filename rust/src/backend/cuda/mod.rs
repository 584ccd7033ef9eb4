//! The CUDA backend: bf16 (or f16) weights, activations and KV cache (or FP8 weights and an FP8
//! KV cache) on one GPU, our
//! NVRTC-compiled kernels for everything but the GEMMs, cuBLASLt for the GEMMs.
//!
//! Everything is enqueued on one stream; the host waits only when it reads results. The
//! backend is made of parts that own their state:
//!
//! | part | owns |
//! | --- | --- |
//! | `ops.rs` | the forward pass's operations ([`Ops`](crate::backend::Ops)): kernel and GEMM launches |
//! | `device.rs` | the device side ([`Backend`](crate::backend::Backend)): memory, KV pool, a step's life, sleep |
//! | `supported.rs` | what the kernels support: dtypes, shapes, block sizes (checked before the GPU is opened) |
//! | `arena.rs`, `arena_space.rs` | the weights' and the KV pool's memory, whose backing a sleep drops and a wake restores at the same addresses; which of its offsets are in use |
//! | `share.rs` | the shares of a card (`gpu_memory_utilization`) held by the engines of one process |
//! | `step_meta.rs` | the step's batch description on the device, uploaded once per step |
//! | `decode_plan.rs` | how decode attention splits the keys (all of the split policy) |
//! | `sampler.rs` | the device sampler and the tokens' copy to the host |
//! | `clock.rs` | the wait for a step (nap, then spin) and its device timing |
//! | `graphs.rs` | recording a decode step as a CUDA graph and replaying it |
//! | `kernels/` | the compiled kernels and their launch wrappers; `jit.rs` compiles them |
//! | `gemm.rs` | cuBLASLt |
//! | `fp8.rs`, `fp8_gemm.rs` | FP8 matrices (as stored, or quantized at load); their GEMM in steps of several rows |
//!
//! cudarc loads libcuda, libnvrtc and libcublasLt at run time, so this module builds and the
//! crate runs on machines without CUDA; [`CudaBackend::new`] fails cleanly there.

mod arena;
mod arena_space;
mod clock;
mod decode_plan;
mod device;
mod device_mem;
mod fp8;
mod fp8_gemm;
pub mod gemm;
mod graphs;
pub mod jit;
mod kernels;
mod libs;
mod ops;
mod sampler;
mod share;
mod step_meta;
mod supported;

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use self::arena::Arena;
use self::clock::{StepClock, StepShape};
use self::decode_plan::DecodePlan;
use self::device_mem::DeviceMem;
use self::gemm::{ElemType, Gemm};
use self::jit::KernelDtype;
use self::kernels::{KernelSet, Kernels, FP8_MMA_MAX_ROWS, GEMV_MAX_ROWS};
use self::sampler::DeviceSampler;
use self::step_meta::StepMeta;
use super::{KvDtype, KvLayout};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tuning::Tuning;

pub use self::graphs::CudaStepGraph;

/// Bytes of one activation, weight or KV-cache element (bf16 or f16).
const ELEM_BYTES: usize = 2;

/// Options of the CUDA backend (the KV layout, dtype included, comes apart: [`KvLayout`]).
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// GPU ordinal.
    pub device: usize,
    /// Activations' and (unquantized) weights' dtype: `Bf16` or `F16`.
    pub dtype: KvDtype,
    /// Whether projections are quantized to FP8 at load (`quantization="fp8"`).
    pub quantize_fp8: bool,
    /// Fraction of the GPU's memory the engine may hold in all (weights, activations, KV).
    pub gpu_memory_utilization: f64,
    /// Whether the engine claims `gpu_memory_utilization` of the card among the engines of
    /// the process (`share.rs`): when it sizes its KV pool by that fraction. An engine given
    /// `kv_cache_tokens` holds what that takes, bounded by the free memory, and claims nothing.
    pub claim_share: bool,
    /// Where compiled kernels are cached; `None` compiles every time.
    pub kernel_cache_dir: Option<PathBuf>,
    /// Measurement knobs (read once from the environment by the caller).
    pub tuning: Tuning,
}

/// Number of CUDA devices, 0 when there is no driver or no GPU.
pub fn device_count() -> usize {
    // SAFETY: only probes whether libcuda can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// A device activation buffer of `len` elements of `dtype`.
pub struct CudaBuf {
    mem: DeviceMem,
    len: usize,
    dtype: ElemType,
}

/// A weight matrix `[rows, cols]` in the activation dtype, or of FP8 codes with their scales.
pub struct CudaMatrix {
    mem: DeviceMem,
    rows: usize,
    cols: usize,
    fp8: Option<fp8::Fp8Weights>,
}

/// A 1-D weight in the activation dtype.
pub struct CudaVector {
    mem: DeviceMem,
    len: usize,
}

/// The paged KV cache: for each layer, keys then values, each
/// `[num_blocks, block_size, num_kv_heads, head_dim]`, in one allocation.
pub struct CudaKvCache {
    mem: DeviceMem,
    /// Bytes of one layer's keys (and of its values).
    plane_bytes: usize,
    /// Each layer's `[k, v]` scales of an FP8 cache (a cached key is its code's value times
    /// `k`); 1 for a cache of T, where the kernels ignore them.
    scales: Vec<[f32; 2]>,
}

impl CudaKvCache {
    fn scales(&self, layer: usize) -> [f32; 2] {
        self.scales.get(layer).copied().unwrap_or([1.0, 1.0])
    }
    fn k_ptr(&self, layer: usize) -> u64 {
        self.mem.ptr + (2 * layer * self.plane_bytes) as u64
    }
    fn v_ptr(&self, layer: usize) -> u64 {
        self.k_ptr(layer) + self.plane_bytes as u64
    }
}

/// The CUDA backend of one model on one GPU.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    opts: CudaOptions,
    layout: KvLayout,
    /// Weights', activations' and the KV cache's dtype (the layout's).
    dtype: KernelDtype,
    name: String,
    /// Streaming multiprocessors (sizes the GEMV grids and the decode plan).
    sm_count: usize,
    /// Steps of up to this many rows (one) run their projections on the GEMV kernels, with
    /// the norms, SwiGLU and residual adds fused in; larger steps on cuBLASLt
    /// (`Tuning::gemv_max_rows` can lower it, to measure one against the other).
    gemv_max_rows: usize,
    /// The same for FP8 matrices the tensor-core FP8 GEMV takes (`kernels::fp8_mma_fits`):
    /// up to [`FP8_MMA_MAX_ROWS`] rows on sm_89+ (the same tuning lowers it), else as above.
    fp8_gemv_max_rows: usize,
    gemm: Gemm,
    /// How FP8 GEMMs run: on tensor cores from sm_89 on, in the way cuBLASLt offers.
    fp8_gemm: fp8_gemm::Fp8Gemm,
    fp8_needs: fp8_gemm::Fp8Needs,
    fp8_scratch: fp8_gemm::Fp8Scratch,
    kernels: KernelSet,
    meta: StepMeta,
    plan: DecodePlan,
    sampler: DeviceSampler,
    clock: StepClock,
    /// RoPE inverse frequencies on the device, uploaded on first use.
    inv_freq: RefCell<Option<(Vec<f32>, DeviceMem)>>,
    /// Pinned staging for weights copied from the file as they are; made on first use and
    /// freed once loading is done.
    uploader: RefCell<Option<device_mem::Uploader>>,
    /// Free device memory when the backend started, before any of its allocations.
    free_at_start: usize,
    /// Per-layer `[k, v]` scales of an FP8 KV cache from the checkpoint
    /// ([`Backend::set_kv_cache_scales`]); layers without them use 1, as vLLM does.
    kv_scales: RefCell<Vec<[f32; 2]>>,
    /// Where the weights live (every matrix and vector; activations and scratch do not).
    weights: Arena,
    /// Where the KV pool lives, once it is made.
    kv_arena: RefCell<Option<Arena>>,
    /// This engine's share of the card, held while its memory is there (not while asleep).
    share: Option<share::Claim>,
    /// First failure of an enqueued operation; reported by the next wait.
    error: RefCell<Option<Error>>,
    /// Whether a graph was recorded: from then on the step description must not move.
    graphs_recorded: bool,
}

// SAFETY: the backend is used by one thread at a time (the engine moves it into its loop
// thread once); the CUDA handles inside may move between threads.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens the GPU and starts compiling the kernels for `model` and the KV `layout` in the
    /// background (they are needed at the first step, so compiling overlaps with loading the
    /// weights).
    pub fn new(opts: CudaOptions, model: &ModelConfig, layout: KvLayout) -> Result<CudaBackend> {
        if device_count() == 0 {
            return Err(Error::Engine(
                "no CUDA device: the NVIDIA driver (libcuda.so) or a GPU is missing".into(),
            ));
        }
        let (shape, dtype) = (
            layout.shape,
            supported::check_model(model, opts.dtype, &layout)?,
        );
        libs::preload();
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(Error::Engine(
                "cuBLASLt (libcublasLt.so.13) was not found: install the CUDA 13 toolkit or \
                 `pip install nvidia-cublas`, or add its lib directory to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let cuda_err = device_mem::cuda_err;
        // Before anything is allocated: a share that does not fit beside the other engines of
        // this process is refused here.
        let share = match opts.claim_share {
            true => Some(share::Claim::new(opts.device, opts.gpu_memory_utilization)?),
            false => None,
        };
        let ctx = share::context(opts.device)?;
        let stream = ctx.new_stream().map_err(cuda_err)?;
        let (free_at_start, _) = ctx.mem_get_info().map_err(cuda_err)?;
        let (major, minor) = ctx.compute_capability().map_err(cuda_err)?;
        let name = ctx.name().map_err(cuda_err)?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err)? as usize;
        let t = &opts.tuning;
        // An FP8 cache: the cache write and the attention kernels are compiled for e4m3 codes.
        let fp8_kv = (layout.dtype == KvDtype::Fp8E4m3).then(|| ("KV_FP8".to_string(), None));
        let kernels = KernelSet::compile_in_background(
            jit::arch_for(major, minor),
            dtype,
            shape,
            layout.block_size,
            opts.kernel_cache_dir.clone(),
            t.kernel_defines.iter().cloned().chain(fp8_kv).collect(),
            !t.no_pdl,
        );
        // Addresses for as many weights as the card holds; physical memory comes in chunks of
        // 256 MiB as they load.
        let total = ctx.total_mem().map_err(cuda_err)?;
        let weights = Arena::new(&ctx, "weights", total, 256 << 20, true)?;
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let ws = stream
            .alloc_zeros::<u8>(workspace_bytes)
            .map_err(cuda_err)?;
        let ws_ptr = device_mem::slice_ptr(&stream, &ws);
        let gemm = Gemm::new(ws, ws_ptr)?;
        let plan = DecodePlan::new(
            &stream,
            shape,
            layout.block_size,
            sm_count,
            t.decode_min_split_keys,
            t.decode_batch_splits,
        )?;
        // The tensor-core FP8 GEMV, where it is compiled, takes up to 8 rows.
        let fp8_rows = if jit::compiles_for("gemv_fp8_mma", &jit::arch_for(major, minor)) {
            FP8_MMA_MAX_ROWS
        } else {
            GEMV_MAX_ROWS
        };
        Ok(CudaBackend {
            meta: StepMeta::new(&stream)?,
            sampler: DeviceSampler::new(&ctx, &stream)?,
            clock: StepClock::new(&ctx)?,
            gemv_max_rows: t.gemv_max_rows.unwrap_or(GEMV_MAX_ROWS).min(GEMV_MAX_ROWS),
            fp8_gemv_max_rows: t.gemv_max_rows.unwrap_or(fp8_rows).min(fp8_rows),
            uploader: RefCell::new(None),
            free_at_start,
            weights,
            kv_arena: RefCell::new(None),
            share,
            plan,
            ctx,
            stream,
            opts,
            layout,
            dtype,
            name,
            sm_count,
            gemm,
            fp8_gemm: if (major, minor) >= (8, 9) {
                fp8_gemm::Fp8Gemm::OuterVector
            } else {
                fp8_gemm::Fp8Gemm::Dequantized
            },
            fp8_needs: Default::default(),
            fp8_scratch: Default::default(),
            kernels,
            inv_freq: RefCell::new(None),
            error: RefCell::new(None),
            kv_scales: RefCell::new(Vec::new()),
            graphs_recorded: false,
        })
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Keeps the first error of an enqueued operation for the next wait.
    fn record(&self, r: Result<()>) {
        if let Err(e) = r {
            self.error.borrow_mut().get_or_insert(e);
        }
    }

    /// Enqueues one operation of the step; a failure is kept for the next wait.
    fn enqueue(&self, op: impl FnOnce(&Kernels) -> Result<()>) {
        let r = self.kernels().and_then(op);
        self.record(r);
    }

    fn kernels(&self) -> Result<&Kernels> {
        self.kernels.get(&self.ctx)
    }

    /// The GEMM element type of activations and weights.
    fn elem_type(&self) -> ElemType {
        match self.dtype {
            KernelDtype::Bf16 => ElemType::Bf16,
            KernelDtype::F16 => ElemType::F16,
        }
    }

    /// Waits until the stream has done everything enqueued so far (the step's end: see
    /// [`StepClock::wait`]) and reports the first failure of it.
    fn wait(&mut self) -> Result<()> {
        if let Some(e) = self.error.get_mut().take() {
            return Err(e);
        }
        let shape = StepShape {
            rows: self.meta.rows,
            has_prompt_rows: self.meta.max_query_len > 1,
        };
        self.clock.wait(&self.stream, shape)
    }

    /// The RoPE table on the device, uploaded the first time (the model's table never
    /// changes; a different one replaces it).
    fn inv_freq_ptr(&self, inv_freq: &[f32]) -> Result<u64> {
        let mut cached = self.inv_freq.borrow_mut();
        if cached.as_ref().map(|(v, _)| v.as_slice()) != Some(inv_freq) {
            let mem = DeviceMem::from_host(&self.stream, bytemuck::cast_slice(inv_freq))?;
            *cached = Some((inv_freq.to_vec(), mem));
        }
        Ok(cached.as_ref().map_or(0, |(_, m)| m.ptr))
    }
}
