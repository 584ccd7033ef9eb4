//! The CUDA backend: bf16 (or f16) weights and activations on one GPU, our NVRTC-compiled
//! kernels for everything but the GEMMs, cuBLASLt for the GEMMs.
//!
//! Everything is enqueued on one stream; the host waits only when it reads results
//! ([`Backend::to_host`]). A step's batch description (token ids, positions, slots, block
//! tables) goes to the device once, in [`Backend::prepare_step`], as one packed `i32` array;
//! the operations read it from there.
//!
//! cudarc loads libcuda, libnvrtc and libcublasLt at run time, so this module builds and the
//! crate runs on machines without CUDA; [`CudaBackend::new`] fails cleanly there.

mod device_mem;
pub mod gemm;
mod graphs;
pub mod jit;
mod kernels;
mod libs;
mod step_meta;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use half::{bf16, f16};
use rayon::prelude::*;

use self::device_mem::DeviceMem;
use self::gemm::{ElemType, Gemm, GemmShape};
use self::kernels::{KernelSet, Kernels, SplitBuffers};
use self::step_meta::StepMeta;
use super::{AttentionShape, Backend, ForwardBatch};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::{HostTensor, RawTensor};

/// `rows × splits` the split-KV decode scratch holds: two CTAs per SM's worth of splits for a
/// few rows (see `kernels::decode_splits`).
const SPLIT_ROWS: usize = 1024;

/// Options of the CUDA backend.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// GPU ordinal.
    pub device: usize,
    /// Activation and weight dtype: `Bf16` (default) or `F16`.
    pub dtype: ElemType,
    /// Fraction of the GPU's memory the engine may hold in all (weights, activations, KV).
    pub gpu_memory_utilization: f64,
    /// Tokens per KV-cache block (a kernel constant).
    pub block_size: usize,
    /// Where compiled kernels are cached; `None` compiles every time.
    pub kernel_cache_dir: Option<PathBuf>,
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
    /// How long the last wait of a decode-only step ([0]) and of a step with prefill rows
    /// ([1]) lasted: the next wait of the same kind sleeps through most of it.
    last_wait: [Cell<Duration>; 2],
    /// Greedy token ids of the logits rows (`argmax_rows`).
    argmax_out: RefCell<DeviceMem>,
    /// First failure of an enqueued operation; reported by the next `to_host`.
    error: RefCell<Option<Error>>,
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
        if !(0.05..=1.0).contains(&opts.gpu_memory_utilization) {
            return Err(Error::InvalidConfig(format!(
                "gpu_memory_utilization must be in [0.05, 1], got {}",
                opts.gpu_memory_utilization
            )));
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
        let kernels = KernelSet::compile_in_background(
            jit::arch_for(major, minor),
            match opts.dtype {
                ElemType::F16 => jit::KernelDtype::F16,
                _ => jit::KernelDtype::Bf16,
            },
            shape,
            opts.block_size,
            opts.kernel_cache_dir.clone(),
        );
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let ws = DeviceMem::zeroed(&stream, workspace_bytes)?;
        let gemm = Gemm::new(ws.slice, ws.ptr)?;
        let argmax_out = RefCell::new(DeviceMem::zeroed(&stream, 4 << 10)?);
        let split_lse_offset = SPLIT_ROWS * shape.q_size() * 4;
        let split_scratch =
            DeviceMem::zeroed(&stream, split_lse_offset + SPLIT_ROWS * shape.num_heads * 4)?;
        Ok(CudaBackend {
            meta: StepMeta::new(&stream)?,
            argmax_out,
            uploader: RefCell::new(None),
            free_at_start,
            graphs: graphs::DecodeGraphs::new(),
            step_done: ctx.new_event(None).map_err(cuda_err)?,
            last_wait: [Cell::new(Duration::ZERO), Cell::new(Duration::ZERO)],
            split_scratch,
            split_lse_offset,
            ctx,
            stream,
            opts,
            shape,
            name,
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

    fn elem_bytes(&self) -> usize {
        match self.opts.dtype {
            ElemType::F32 => 4,
            _ => 2,
        }
    }

    /// Keeps the first error of an enqueued operation for the next `to_host`.
    fn record(&self, r: Result<()>) {
        if let Err(e) = r {
            self.error.borrow_mut().get_or_insert(e);
        }
    }

    /// Waits until the stream has done everything enqueued so far and reports the first
    /// failure of it.
    ///
    /// Spinning keeps a core busy for the whole step, a blocking wait adds the wake-up latency
    /// of the thread to every step. So the host sleeps through three quarters of what the last
    /// wait of the same kind of step took (decode steps of a running batch take about the same
    /// time) and spins on the event for the rest.
    fn wait(&self) -> Result<()> {
        if let Some(e) = self.error.borrow_mut().take() {
            return Err(e);
        }
        self.step_done
            .record(&self.stream)
            .map_err(device_mem::cuda_err)?;
        let start = Instant::now();
        let last = &self.last_wait[usize::from(self.meta.max_query_len > 1)];
        let nap = last.get().mul_f32(0.75);
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
        last.set(start.elapsed());
        Ok(())
    }

    /// Ends the step's graph capture, or launches its graph, before the host reads results.
    fn finish_graph(&self) -> Result<()> {
        let failed = self.error.borrow().is_some();
        self.graphs.finish_step(&self.stream, failed)
    }

    fn kernels(&self) -> Result<&Kernels> {
        self.kernels.get(&self.ctx)
    }

    /// Converts a weight to the activation dtype (in parallel) and copies it to the device.
    fn upload_weights(&self, t: &HostTensor) -> Result<DeviceMem> {
        match self.opts.dtype {
            ElemType::F16 => {
                let v: Vec<f16> = t.data.par_iter().map(|&x| f16::from_f32(x)).collect();
                DeviceMem::from_host(&self.stream, bytemuck::cast_slice(&v))
            }
            ElemType::Bf16 => {
                let v: Vec<bf16> = t.data.par_iter().map(|&x| bf16::from_f32(x)).collect();
                DeviceMem::from_host(&self.stream, bytemuck::cast_slice(&v))
            }
            ElemType::F32 => DeviceMem::from_host(&self.stream, bytemuck::cast_slice(&t.data)),
        }
    }

    fn gemm_input(&self) -> ElemType {
        self.opts.dtype
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;

    fn matrix(&self, t: HostTensor) -> Result<CudaMatrix> {
        let [rows, cols] = t.shape[..] else {
            return Err(Error::Engine(format!(
                "expected a 2-D weight, got shape {:?}",
                t.shape
            )));
        };
        Ok(CudaMatrix {
            mem: self.upload_weights(&t)?,
            rows,
            cols,
        })
    }

    fn matrix_raw(&self, parts: &[RawTensor<'_>]) -> Option<Result<CudaMatrix>> {
        let want = match self.opts.dtype {
            ElemType::Bf16 => "BF16",
            ElemType::F16 => "F16",
            ElemType::F32 => "F32",
        };
        let cols = parts.first()?.shape.get(1).copied()?;
        if parts
            .iter()
            .any(|p| p.dtype != want || p.shape.len() != 2 || p.shape[1] != cols)
        {
            return None;
        }
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        Some((|| {
            let mem = DeviceMem::zeroed(&self.stream, rows * cols * self.elem_bytes())?;
            let mut slot = self.uploader.borrow_mut();
            let uploader = match slot.as_mut() {
                Some(u) => u,
                None => slot.insert(device_mem::Uploader::new(&self.stream)?),
            };
            let mut offset = 0u64;
            for p in parts {
                uploader.upload(&self.stream, mem.ptr + offset, p.bytes)?;
                offset += p.bytes.len() as u64;
            }
            Ok(CudaMatrix { mem, rows, cols })
        })())
    }

    fn vector(&self, t: HostTensor) -> Result<CudaVector> {
        Ok(CudaVector {
            mem: self.upload_weights(&t)?,
            len: t.data.len(),
        })
    }

    fn buffer(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            mem: DeviceMem::zeroed(&self.stream, len * self.elem_bytes())?,
            len,
            dtype: self.opts.dtype,
        })
    }

    fn logits_buffer(&self, len: usize) -> Result<CudaBuf> {
        Ok(CudaBuf {
            mem: DeviceMem::zeroed(&self.stream, len * 4)?,
            len,
            dtype: ElemType::F32,
        })
    }

    fn kv_element_bytes(&self) -> usize {
        self.elem_bytes()
    }

    fn kv_cache_budget_bytes(&self) -> Option<usize> {
        let (free, total) = self.ctx.mem_get_info().ok()?;
        // gpu_memory_utilization is this engine's share of the card (as in vLLM), so other
        // processes' memory does not count against it; what is free bounds it all the same.
        // 256 MiB stay for what comes later (cuBLASLt, CUDA graphs).
        let own = self.free_at_start.saturating_sub(free);
        let allowed = (total as f64 * self.opts.gpu_memory_utilization) as usize;
        let reserve = 256 << 20;
        Some(
            allowed
                .saturating_sub(own + reserve)
                .min(free.saturating_sub(reserve)),
        )
    }

    fn kv_cache(
        &self,
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        shape: AttentionShape,
    ) -> Result<CudaKvCache> {
        if block_size != self.opts.block_size || shape != self.shape {
            return Err(Error::Engine(format!(
                "KV cache shape {shape:?} / block {block_size} differs from the kernels' \
                 {:?} / {}",
                self.shape, self.opts.block_size
            )));
        }
        let plane_bytes = num_blocks
            .checked_mul(block_size * shape.kv_size() * self.elem_bytes())
            .ok_or_else(|| Error::InvalidConfig("KV cache size overflows".into()))?;
        Ok(CudaKvCache {
            mem: DeviceMem::zeroed(&self.stream, 2 * num_layers * plane_bytes)?,
            plane_bytes,
        })
    }

    fn finish_loading(&self) -> Result<()> {
        // The staging buffers go once the copies out of them are done.
        self.stream.synchronize().map_err(device_mem::cuda_err)?;
        self.uploader.borrow_mut().take();
        self.kernels().map(|_| ())
    }

    fn decode_graph_rows(&self, rows: usize) -> Option<usize> {
        graphs::bucket_rows(rows)
    }

    fn prepare_step(&mut self, batch: &ForwardBatch) {
        let r = self.meta.upload(&self.stream, batch).and_then(|moved| {
            if moved {
                self.graphs.clear();
            }
            // A decode-only step of a bucket's size repeats its launches exactly.
            let decode = batch.seqs.len() == batch.num_tokens()
                && batch.logits_rows.len() == batch.num_tokens()
                && self.meta.max_query_len == 1;
            let key = (decode
                && graphs::bucket_rows(batch.num_tokens()) == Some(batch.num_tokens()))
            .then_some((batch.num_tokens(), self.meta.max_blocks));
            self.graphs.begin_step(&self.stream, key)
        });
        self.record(r);
    }

    fn embedding(&self, table: &CudaMatrix, _ids: &[u32], out: &mut CudaBuf) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.kernels().and_then(|k| {
            k.embedding(
                &self.stream,
                table.mem.ptr,
                self.meta.token_ids(),
                out.mem.ptr,
                self.meta.rows,
                table.cols,
            )
        });
        self.record(r);
    }

    fn rms_norm(&self, x: &CudaBuf, w: &CudaVector, eps: f32, rows: usize, out: &mut CudaBuf) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.kernels().and_then(|k| {
            k.rms_norm(
                &self.stream,
                x.mem.ptr,
                w.mem.ptr,
                out.mem.ptr,
                rows,
                w.len,
                eps,
            )
        });
        self.record(r);
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaVector,
        eps: f32,
        rows: usize,
        out: &mut CudaBuf,
    ) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.kernels().and_then(|k| {
            k.add_rms_norm(
                &self.stream,
                residual.mem.ptr,
                x.mem.ptr,
                w.mem.ptr,
                out.mem.ptr,
                rows,
                w.len,
                eps,
            )
        });
        self.record(r);
    }

    fn linear(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
    ) {
        if self.graphs.replaying() {
            return;
        }
        debug_assert!(rows * w.cols <= x.len && rows * w.rows <= out.len);
        let shape = GemmShape {
            rows,
            n: w.rows,
            k: w.cols,
            input: self.gemm_input(),
            output: out.dtype,
            bias: bias.is_some(),
        };
        let r = self.gemm.run(
            shape,
            x.mem.ptr,
            w.mem.ptr,
            bias.map(|b| b.mem.ptr),
            out.mem.ptr,
            &self.stream,
        );
        self.record(r);
    }

    fn qk_norm(
        &self,
        qkv: &mut CudaBuf,
        rows: usize,
        shape: AttentionShape,
        q_w: &CudaVector,
        k_w: &CudaVector,
        eps: f32,
    ) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.kernels().and_then(|k| {
            k.qk_norm(
                &self.stream,
                qkv.mem.ptr,
                q_w.mem.ptr,
                k_w.mem.ptr,
                rows,
                shape,
                eps,
            )
        });
        self.record(r);
    }

    fn rope_and_cache_write(
        &self,
        qkv: &mut CudaBuf,
        _batch: &ForwardBatch,
        inv_freq: &[f32],
        shape: AttentionShape,
        cache: &mut CudaKvCache,
        layer: usize,
    ) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.inv_freq_ptr(inv_freq).and_then(|freq| {
            self.kernels()?.rope_cache_write(
                &self.stream,
                qkv.mem.ptr,
                &self.meta,
                freq,
                cache.k_ptr(layer),
                cache.v_ptr(layer),
                shape,
            )
        });
        self.record(r);
    }

    fn attention(
        &self,
        qkv: &CudaBuf,
        _batch: &ForwardBatch,
        shape: AttentionShape,
        cache: &CudaKvCache,
        layer: usize,
        out: &mut CudaBuf,
    ) {
        if self.graphs.replaying() {
            return;
        }
        let r = self.kernels().and_then(|k| {
            k.attention(
                &self.stream,
                qkv.mem.ptr,
                cache.k_ptr(layer),
                cache.v_ptr(layer),
                out.mem.ptr,
                &self.meta,
                shape,
                &SplitBuffers {
                    partial_out: self.split_scratch.ptr,
                    partial_lse: self.split_scratch.ptr + self.split_lse_offset as u64,
                    rows_times_splits: SPLIT_ROWS,
                    max_context: self.meta.max_blocks * self.opts.block_size,
                },
            )
        });
        self.record(r);
    }

    fn silu_mul(&self, x: &CudaBuf, rows: usize, n: usize, out: &mut CudaBuf) {
        if self.graphs.replaying() {
            return;
        }
        let r = self
            .kernels()
            .and_then(|k| k.silu_mul(&self.stream, x.mem.ptr, out.mem.ptr, rows, n));
        self.record(r);
    }

    fn gather_rows(&self, x: &CudaBuf, rows: &[u32], width: usize, out: &mut CudaBuf) {
        if self.graphs.replaying() {
            return;
        }
        debug_assert_eq!(rows.len(), self.meta.num_logits);
        let r = self.kernels().and_then(|k| {
            k.gather_rows(
                &self.stream,
                x.mem.ptr,
                self.meta.logits_rows(),
                out.mem.ptr,
                rows.len(),
                width,
            )
        });
        self.record(r);
    }

    fn to_host(&self, x: &CudaBuf, len: usize) -> Result<Vec<f32>> {
        self.finish_graph()?;
        self.wait()?;
        x.mem.read_f32(&self.stream, x.dtype, len)
    }

    fn argmax_rows(&self, logits: &CudaBuf, rows: usize, width: usize) -> Result<Vec<u32>> {
        self.finish_graph()?;
        if let Some(e) = self.error.borrow_mut().take() {
            return Err(e);
        }
        debug_assert!(logits.dtype == ElemType::F32 && rows * width <= logits.len);
        let mut out = self.argmax_out.borrow_mut();
        if out.bytes() < rows * 4 {
            *out = DeviceMem::zeroed(&self.stream, (rows * 4).next_power_of_two())?;
        }
        self.kernels()?
            .argmax(&self.stream, logits.mem.ptr, rows, width, out.ptr)?;
        self.wait()?;
        let ids = out.read_i32(&self.stream, rows)?;
        Ok(ids.into_iter().map(|t| t as u32).collect())
    }
}

impl CudaBackend {
    fn inv_freq_ptr(&self, inv_freq: &[f32]) -> Result<u64> {
        let mut cached = self.inv_freq.borrow_mut();
        if cached.as_ref().map(|(v, _)| v.as_slice()) != Some(inv_freq) {
            let mem = DeviceMem::from_host(&self.stream, bytemuck::cast_slice(inv_freq))?;
            *cached = Some((inv_freq.to_vec(), mem));
        }
        Ok(cached.as_ref().map(|(_, m)| m.ptr).unwrap_or(0))
    }
}
