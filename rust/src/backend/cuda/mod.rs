//! The CUDA backend: bf16 (or f16) weights and activations on one GPU, our NVRTC-compiled
//! kernels for everything but the GEMMs, cuBLASLt for the GEMMs.
//!
//! Everything is enqueued on one stream; the host waits only when it reads results
//! ([`Backend::to_host`](crate::backend::Backend::to_host)). A step's batch description (token
//! ids, positions, slots, block tables) goes to the device once, in
//! [`Backend::prepare_step`](crate::backend::Backend::prepare_step), as one packed `i32` array;
//! the operations (`ops.rs`) read it from there.
//!
//! cudarc loads libcuda, libnvrtc and libcublasLt at run time, so this module builds and the
//! crate runs on machines without CUDA; [`CudaBackend::new`] fails cleanly there.

mod device_mem;
pub mod gemm;
mod graphs;
pub mod jit;
mod kernels;
mod libs;
mod ops;
mod step_meta;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream, PinnedHostSlice};
use half::{bf16, f16};
use rayon::prelude::*;

use self::device_mem::DeviceMem;
use self::gemm::{ElemType, Gemm};
use self::jit::KernelDtype;
use self::kernels::{
    GemvArgs, GemvInput, GemvOutput, KernelSet, Kernels, SplitBuffers, GEMV_MAX_ROWS,
};
use self::step_meta::StepMeta;
use super::{AttentionShape, ForwardBatch, StepTiming};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::sampling::StepSampling;
use crate::tuning::Tuning;
use crate::weights::HostTensor;

/// Bytes of one activation, weight or KV-cache element (bf16 or f16).
const ELEM_BYTES: usize = 2;

/// `rows × splits` the split-KV decode scratch holds: a full GPU's worth of one-warp CTAs for
/// a few rows (see `kernels::decode_splits`).
const SPLIT_ROWS: usize = 1024;

/// Options of the CUDA backend.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// GPU ordinal.
    pub device: usize,
    /// Activation, weight and KV-cache dtype: `Bf16` (default) or `F16`.
    pub dtype: KernelDtype,
    /// Fraction of the GPU's memory the engine may hold in all (weights, activations, KV).
    pub gpu_memory_utilization: f64,
    /// Tokens per KV-cache block (a kernel constant).
    pub block_size: usize,
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

/// A weight matrix `[rows, cols]` in the activation dtype.
pub struct CudaMatrix {
    mem: DeviceMem,
    rows: usize,
    cols: usize,
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
}

impl CudaKvCache {
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
    shape: AttentionShape,
    name: String,
    /// Streaming multiprocessors (sizes the split-KV decode and GEMV grids).
    sm_count: usize,
    /// Steps of up to this many rows (one) run their projections on the GEMV kernels, with
    /// the norms, SwiGLU and residual adds fused in; larger steps on cuBLASLt
    /// (`Tuning::gemv_max_rows` can lower it, to measure one against the other).
    gemv_max_rows: usize,
    /// Fewest keys per split of decode attention at a few rows (`kernels::MIN_KEYS_PER_SPLIT`,
    /// or `Tuning::decode_min_split_keys`).
    min_split_keys: usize,
    /// Splits of decode attention in a large batch (`kernels::DEFAULT_BATCH_SPLITS`, or
    /// `Tuning::decode_batch_splits`; 1 turns them off).
    batch_splits: usize,
    gemm: Gemm,
    kernels: KernelSet,
    meta: StepMeta,
    /// RoPE inverse frequencies on the device, uploaded on first use.
    inv_freq: RefCell<Option<(Vec<f32>, DeviceMem)>>,
    /// Pinned staging for weights copied from the file as they are; made on first use and
    /// freed once loading is done.
    uploader: RefCell<Option<device_mem::Uploader>>,
    /// Partial outputs, then log-sum-exps, of split-KV decode attention.
    split_scratch: DeviceMem,
    split_lse_offset: usize,
    /// Free device memory when the backend started, before any of its allocations.
    free_at_start: usize,
    /// Decode steps replayed as CUDA graphs.
    graphs: graphs::DecodeGraphs,
    /// Recorded after a step's work; the host waits on it (see [`CudaBackend::wait`]).
    step_done: CudaEvent,
    /// The last decode-only step ([0]) and step with prompt rows ([1]): the next wait of the
    /// same kind sleeps through most of its span (see [`nap`]).
    last_span: [Cell<StepSpan>; 2],
    /// When the step being enqueued started (`prepare_step`).
    step_started: Cell<Option<Instant>>,
    /// Token ids of the logits rows (`sample_rows`), and their page-locked host copy.
    tokens_out: RefCell<DeviceMem>,
    tokens_host: RefCell<PinnedHostSlice<i32>>,
    /// The sample kernel's parameters of the current step: packed on the host (kept until
    /// the next step, the copy reads them asynchronously), and their device copy.
    sample_params: RefCell<(Vec<u32>, DeviceMem)>,
    /// Rows whose tokens `submit_step` started picking, which `sample_rows` then collects.
    sampling_started: Cell<Option<usize>>,
    /// First failure of an enqueued operation; reported by the next `to_host`.
    error: RefCell<Option<Error>>,
    /// Device timing of each step (`Backend::time_steps`); off by default.
    timer: Option<StepTimer>,
}

/// Page-locked host memory for `len` token ids, cached (not write-combined: the host reads
/// it).
///
/// # Safety
/// The memory is uninitialized.
unsafe fn pinned_tokens(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> std::result::Result<PinnedHostSlice<i32>, cudarc::driver::DriverError> {
    ctx.alloc_pinned_with_flags::<i32>(len, 0)
}

/// What the last step of a kind took from its start (`prepare_step`) to the end of its wait,
/// and its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct StepSpan {
    took: Duration,
    rows: usize,
}

/// How long the host sleeps before spinning on a step of `rows` rows that started `since` ago,
/// when the last step of its kind spanned `last`: three quarters of that span, scaled down by
/// the rows (a short prompt step after full ones would otherwise sleep past its end), less the
/// time already gone (a launch that took most of the step itself).
fn nap(last: StepSpan, rows: usize, since: Duration) -> Duration {
    if last.rows == 0 {
        return Duration::ZERO;
    }
    let scale = (rows as f64 / last.rows as f64).min(1.0);
    last.took.mul_f64(0.75 * scale).saturating_sub(since)
}

/// Times steps on the device with events: one recorded when a step's batch is uploaded, one
/// when the host waits for its end; the end events alternate so that the idle time before a
/// step reads the previous step's end.
struct StepTimer {
    begin: CudaEvent,
    end: [CudaEvent; 2],
    /// Which `end` event the next wait records.
    next: Cell<usize>,
    /// Whether `begin` was recorded since the last wait (waits outside steps are not timed).
    begun: Cell<bool>,
    /// Whether the other `end` event holds the previous step's end.
    has_prev: Cell<bool>,
    last: Cell<Option<StepTiming>>,
}

impl StepTimer {
    fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        // Events without CU_EVENT_DISABLE_TIMING.
        let event = || {
            ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(device_mem::cuda_err)
        };
        Ok(StepTimer {
            begin: event()?,
            end: [event()?, event()?],
            next: Cell::new(0),
            begun: Cell::new(false),
            has_prev: Cell::new(false),
            last: Cell::new(None),
        })
    }

    fn begin(&self, stream: &CudaStream) -> Result<()> {
        self.begin.record(stream).map_err(device_mem::cuda_err)?;
        self.begun.set(true);
        Ok(())
    }

    /// Records the end of a begun step; [`read`](Self::read) once the stream has passed it.
    fn end(&self, stream: &CudaStream) -> Result<bool> {
        if !self.begun.get() {
            return Ok(false);
        }
        self.end[self.next.get()]
            .record(stream)
            .map_err(device_mem::cuda_err)?;
        Ok(true)
    }

    fn read(&self) -> Result<()> {
        let (n, begin) = (self.next.get(), &self.begin);
        let device_ms = begin
            .elapsed_ms(&self.end[n])
            .map_err(device_mem::cuda_err)?;
        let prev = &self.end[1 - n];
        let idle_before_ms = match self.has_prev.get() {
            true => Some(prev.elapsed_ms(begin).map_err(device_mem::cuda_err)?),
            false => None,
        };
        self.last.set(Some(StepTiming {
            device_ms,
            idle_before_ms,
        }));
        self.next.set(1 - n);
        self.begun.set(false);
        self.has_prev.set(true);
        Ok(())
    }
}

// SAFETY: the backend is used by one thread at a time (the engine moves it into its loop
// thread once); the CUDA handles inside may move between threads.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens the GPU and starts compiling the kernels for `model` in the background (they are
    /// needed at the first step, so compiling overlaps with loading the weights).
    pub fn new(opts: CudaOptions, model: &ModelConfig) -> Result<CudaBackend> {
        if device_count() == 0 {
            return Err(Error::Engine(
                "no CUDA device: the NVIDIA driver (libcuda.so) or a GPU is missing".into(),
            ));
        }
        let shape = AttentionShape {
            num_heads: model.num_attention_heads,
            num_kv_heads: model.num_key_value_heads,
            head_dim: model.head_dim,
        };
        for (what, n) in [
            ("hidden_size", model.hidden_size),
            ("intermediate_size", model.intermediate_size),
            ("head_dim", model.head_dim),
        ] {
            if n % 8 != 0 {
                return Err(Error::Unsupported(format!(
                    "the CUDA backend needs {what} to be a multiple of 8, got {n}"
                )));
            }
        }
        // Limits of the kernels: rms_norm keeps a row in registers, prefill attention keeps
        // a tile of K and V of HEAD_DIM ≤ 128 in static shared memory.
        if model.hidden_size > 16384 || model.head_dim > 128 || model.head_dim % 16 != 0 {
            return Err(Error::Unsupported(format!(
                "the CUDA kernels support hidden_size ≤ 16384 and head_dim a multiple of 16 up \
                 to 128; this model has {} and {}",
                model.hidden_size, model.head_dim
            )));
        }
        if opts.block_size % 16 != 0 {
            return Err(Error::InvalidConfig(format!(
                "the CUDA backend needs block_size to be a multiple of 16, got {}",
                opts.block_size
            )));
        }
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
        let ctx = CudaContext::new(opts.device).map_err(cuda_err)?;
        // The engine thread waits for each step's results; blocking (instead of spinning)
        // leaves its core free while the GPU works.
        ctx.set_blocking_synchronize().map_err(cuda_err)?;
        // One stream, and every buffer used only on it: cudarc's per-buffer event tracking
        // (for multi-stream safety) would only add two event records per use.
        // SAFETY: no buffer exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err)?;
        let (free_at_start, _) = ctx.mem_get_info().map_err(cuda_err)?;
        let (major, minor) = ctx.compute_capability().map_err(cuda_err)?;
        let name = ctx.name().map_err(cuda_err)?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err)? as usize;
        let kernels = KernelSet::compile_in_background(
            jit::arch_for(major, minor),
            opts.dtype,
            shape,
            opts.block_size,
            opts.kernel_cache_dir.clone(),
            opts.tuning.kernel_defines.clone(),
            !opts.tuning.no_pdl,
        );
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let ws = DeviceMem::zeroed(&stream, workspace_bytes)?;
        let gemm = Gemm::new(ws.slice, ws.ptr)?;
        let tokens_out = RefCell::new(DeviceMem::zeroed(&stream, 4 << 10)?);
        let sample_params = RefCell::new((Vec::new(), DeviceMem::zeroed(&stream, 16 << 10)?));
        let split_lse_offset = SPLIT_ROWS * shape.q_size() * 4;
        let split_scratch =
            DeviceMem::zeroed(&stream, split_lse_offset + SPLIT_ROWS * shape.num_heads * 4)?;
        let t = opts.tuning.clone();
        Ok(CudaBackend {
            meta: StepMeta::new(&stream)?,
            tokens_out,
            // SAFETY: written only by the tokens' copies (`start_sampling`).
            tokens_host: RefCell::new(unsafe { pinned_tokens(&ctx, 1024) }.map_err(cuda_err)?),
            sample_params,
            sampling_started: Cell::new(None),
            uploader: RefCell::new(None),
            free_at_start,
            graphs: graphs::DecodeGraphs::new(),
            step_done: ctx.new_event(None).map_err(cuda_err)?,
            last_span: [
                Cell::new(StepSpan::default()),
                Cell::new(StepSpan::default()),
            ],
            step_started: Cell::new(None),
            timer: None,
            split_scratch,
            split_lse_offset,
            ctx,
            stream,
            opts,
            shape,
            name,
            sm_count,
            gemv_max_rows: t.gemv_max_rows.unwrap_or(GEMV_MAX_ROWS).min(GEMV_MAX_ROWS),
            min_split_keys: t
                .decode_min_split_keys
                .unwrap_or(kernels::MIN_KEYS_PER_SPLIT)
                .max(1),
            batch_splits: t
                .decode_batch_splits
                .unwrap_or(kernels::DEFAULT_BATCH_SPLITS)
                .max(1),
            gemm,
            kernels,
            inv_freq: RefCell::new(None),
            error: RefCell::new(None),
        })
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Keeps the first error of an enqueued operation for the next `to_host`.
    fn record(&self, r: Result<()>) {
        if let Err(e) = r {
            self.error.borrow_mut().get_or_insert(e);
        }
    }

    /// Enqueues one operation of the step, unless a captured graph replays the step in its
    /// place; a failure is kept for the next wait.
    fn enqueue(&self, op: impl FnOnce(&Kernels) -> Result<()>) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.kernels().and_then(op);
        self.record(r);
    }

    /// Whether a projection of `rows` rows through `w` runs on the GEMV kernels.
    fn use_gemv(&self, rows: usize, w: &CudaMatrix) -> bool {
        (1..=self.gemv_max_rows).contains(&rows) && w.cols % 8 == 0
    }

    /// The GEMV output kind that writes `out`'s dtype.
    fn gemv_output(out: &CudaBuf) -> GemvOutput {
        if out.dtype == ElemType::F32 {
            GemvOutput::F32
        } else {
            GemvOutput::Store
        }
    }

    /// Enqueues one GEMV (see `kernels/cuda/gemv.cu`): `out` = `input`-read `x` times `w`ᵀ,
    /// stored, stored as f32 or added as `output` says.
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        &self,
        input: GemvInput,
        output: GemvOutput,
        rows: usize,
        w: &CudaMatrix,
        x: &CudaBuf,
        norm_w: Option<&CudaVector>,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
        eps: f32,
    ) {
        debug_assert!(
            !matches!(output, GemvOutput::Add | GemvOutput::Silu) || bias.is_none(),
            "gemv.cu's add and silu take no bias"
        );
        let out_width = if output == GemvOutput::Silu {
            w.rows / 2
        } else {
            w.rows
        };
        debug_assert!(rows * w.cols <= x.len && rows * out_width <= out.len);
        let args = GemvArgs {
            input,
            output,
            rows,
            w: w.mem.ptr,
            n: w.rows,
            k: w.cols,
            x: x.mem.ptr,
            norm_w: norm_w.map_or(0, |v| v.mem.ptr),
            bias: bias.map_or(0, |v| v.mem.ptr),
            out: out.mem.ptr,
            eps,
        };
        self.enqueue(|k| k.gemv(&self.stream, &args, self.sm_count));
    }

    /// The GEMM element type of activations and weights.
    fn elem_type(&self) -> ElemType {
        match self.opts.dtype {
            KernelDtype::Bf16 => ElemType::Bf16,
            KernelDtype::F16 => ElemType::F16,
        }
    }

    /// Waits until the stream has done everything enqueued so far and reports the first
    /// failure of it.
    ///
    /// Spinning keeps a core busy for the whole step, a blocking wait adds the wake-up latency
    /// of the thread to every step. So the host sleeps through most of what the last step of
    /// the same kind took from its start ([`nap`]; decode steps of a running batch take about
    /// the same time) and spins on the event for the rest.
    fn wait(&self) -> Result<()> {
        if let Some(e) = self.error.borrow_mut().take() {
            return Err(e);
        }
        self.step_done
            .record(&self.stream)
            .map_err(device_mem::cuda_err)?;
        let timed = match &self.timer {
            Some(t) => t.end(&self.stream)?,
            None => false,
        };
        let started = self.step_started.take();
        let last = &self.last_span[usize::from(self.meta.max_query_len > 1)];
        let nap = match started {
            Some(t) => nap(last.get(), self.meta.rows, t.elapsed()),
            None => Duration::ZERO, // not a step's wait: spin
        };
        if nap > Duration::from_micros(100) {
            std::thread::sleep(nap);
        }
        while !self
            .step_done
            .try_is_complete()
            .map_err(device_mem::cuda_err)?
        {
            std::hint::spin_loop();
        }
        if let Some(t) = started {
            last.set(StepSpan {
                took: t.elapsed(),
                rows: self.meta.rows,
            });
        }
        if timed {
            self.timer.as_ref().expect("timed").read()?;
        }
        Ok(())
    }

    /// Enqueues the choice of the token of each of `sampling.rows` rows of `width` f32 logits
    /// into `tokens_out`: the argmax kernel when every row is plain greedy, else the sample
    /// kernel with the rows' parameters (uploaded here). Reports an error of the step's
    /// operations first.
    fn start_sampling(
        &self,
        logits: &CudaBuf,
        sampling: &StepSampling,
        width: usize,
    ) -> Result<()> {
        if let Some(e) = self.error.borrow_mut().take() {
            return Err(e);
        }
        let rows = sampling.rows.len();
        debug_assert!(logits.dtype == ElemType::F32 && rows * width <= logits.len);
        if rows == 0 {
            return Ok(()); // a step with no logits rows (a prompt chunk short of its end)
        }
        let mut out = self.tokens_out.borrow_mut();
        out.grow(&self.stream, rows * 4)?;
        let k = self.kernels()?;
        if sampling.is_plain_greedy() {
            k.argmax(&self.stream, logits.mem.ptr, rows, width, out.ptr)?;
        } else {
            let mut params = self.sample_params.borrow_mut();
            let (host, mem) = &mut *params;
            let entries = kernels::pack_sampling(sampling, host);
            mem.grow(&self.stream, host.len() * 4)?;
            // SAFETY: the device buffer holds the host vector; the host vector stays untouched
            // until the next step's sampling, after the engine has waited for this one.
            unsafe { result::memcpy_htod_async(mem.ptr, &host[..], self.stream.cu_stream()) }
                .map_err(device_mem::cuda_err)?;
            let entries_ptr = mem.ptr + 4 * entries as u64;
            k.sample(
                &self.stream,
                logits.mem.ptr,
                rows,
                width,
                mem.ptr,
                entries_ptr,
                out.ptr,
            )?;
        }
        // The tokens' copy to the host is part of the step: once the wait sees the step's end,
        // they are there (a copy and a stream synchronize after it would add a round trip and,
        // with blocking synchronization, the thread's wake-up to every step).
        let mut host = self.tokens_host.borrow_mut();
        if host.len() < rows {
            // A step that failed was not waited for: its copy may still be in flight into the
            // old buffer, which must outlive it (growing is rare: a step of more logits rows
            // than any before).
            self.stream.synchronize().map_err(device_mem::cuda_err)?;
            // SAFETY: page-locked memory that only the copies below write and that the host
            // reads after the stream has passed them (`sample_rows`).
            *host = unsafe { pinned_tokens(&self.ctx, rows.next_power_of_two()) }
                .map_err(device_mem::cuda_err)?;
        }
        let dst = &mut host.as_mut_slice().map_err(device_mem::cuda_err)?[..rows];
        // SAFETY: `dst` is pinned and outlives the copy (the backend keeps it and replaces it
        // only above, once the stream is idle); the host reads it after waiting for the step.
        unsafe { result::memcpy_dtoh_async(dst, out.ptr, self.stream.cu_stream()) }
            .map_err(device_mem::cuda_err)
    }

    /// The tokens of the last step's `rows` logits rows, copied to the host by its sampling
    /// (`start_sampling`); read after the wait for the step.
    fn sampled_tokens(&self, rows: usize) -> Result<Vec<u32>> {
        let host = self.tokens_host.borrow();
        let ids = &host.as_slice().map_err(device_mem::cuda_err)?[..rows];
        Ok(ids.iter().map(|&t| t as u32).collect())
    }

    /// Ends the step's graph capture, or launches its graph, before the host reads results.
    fn finish_graph(&self) -> Result<()> {
        let failed = self.error.borrow().is_some();
        self.graphs.finish_step(&self.stream, failed)
    }

    /// Decode attention's split scratch, for block tables `table_width` blocks wide.
    fn split_buffers(&self, table_width: usize) -> SplitBuffers {
        SplitBuffers {
            partial_out: self.split_scratch.ptr,
            partial_lse: self.split_scratch.ptr + self.split_lse_offset as u64,
            rows_times_splits: SPLIT_ROWS,
            max_context: table_width * self.opts.block_size,
            sm_count: self.sm_count,
            batch_splits: self.batch_splits,
            min_keys: self.min_split_keys,
        }
    }

    /// The fewest keys per split of decode attention in `batch` (uploaded with it): the split
    /// rule of its one-token rows (all of its rows in a decode step, padding included) with
    /// their context lengths. The block tables' width only sizes the split count of a few
    /// rows, which this does not depend on, so any width serves.
    fn step_min_split_keys(&self, batch: &ForwardBatch) -> usize {
        let one_token = || batch.seqs.iter().filter(|q| q.query_len == 1);
        let rule = kernels::decode_splits(one_token().count(), self.shape, &self.split_buffers(1));
        kernels::step_min_split_keys(rule, one_token().map(|q| q.context_len))
    }

    /// The splits decode attention launches for a decode step of `rows` rows whose block
    /// tables are `table_width` blocks wide (part of a decode graph's key).
    fn decode_splits(&self, rows: usize, table_width: usize) -> usize {
        kernels::decode_splits(rows, self.shape, &self.split_buffers(table_width)).splits
    }

    fn kernels(&self) -> Result<&Kernels> {
        self.kernels.get(&self.ctx)
    }

    /// Converts a weight to the activation dtype (in parallel) and copies it to the device.
    fn upload_weights(&self, t: &HostTensor) -> Result<DeviceMem> {
        match self.opts.dtype {
            KernelDtype::F16 => {
                let v: Vec<f16> = t.data.par_iter().map(|&x| f16::from_f32(x)).collect();
                DeviceMem::from_host(&self.stream, bytemuck::cast_slice(&v))
            }
            KernelDtype::Bf16 => {
                let v: Vec<bf16> = t.data.par_iter().map(|&x| bf16::from_f32(x)).collect();
                DeviceMem::from_host(&self.stream, bytemuck::cast_slice(&v))
            }
        }
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

#[cfg(test)]
mod tests {
    use super::{nap, StepSpan};
    use std::time::Duration;

    #[test]
    fn the_nap_follows_the_last_span_the_rows_and_the_time_gone() {
        let ms = Duration::from_millis;
        let decode = StepSpan {
            took: ms(14),
            rows: 256,
        };
        // A decode step like the last: 3/4 of its span from the step's start.
        assert_eq!(nap(decode, 256, ms(1)), ms(14).mul_f64(0.75) - ms(1));
        // Fewer rows: shorter; more rows: no longer than the last span allows.
        assert_eq!(nap(decode, 128, Duration::ZERO), ms(14).mul_f64(0.375));
        assert_eq!(nap(decode, 512, Duration::ZERO), ms(14).mul_f64(0.75));
        // A 679-token prompt step after 8,192-token ones of 190 ms: ~12 ms, not 142.
        let prompt = StepSpan {
            took: ms(190),
            rows: 8192,
        };
        assert!(nap(prompt, 679, Duration::ZERO) < ms(12));
        // A launch that took the step's time: no nap at all.
        assert_eq!(nap(prompt, 8192, ms(198)), Duration::ZERO);
        // No step of the kind yet: spin.
        assert_eq!(
            nap(StepSpan::default(), 8192, Duration::ZERO),
            Duration::ZERO
        );
    }
}
