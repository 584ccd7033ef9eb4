//! What runs a model: the forward pass's math ([`Ops`], in `ops.rs`) and the device side
//! ([`Backend`]: memory, the KV pool, a step's upload and lifecycle, sampling, timing, graphs).
//!
//! A backend owns its buffers and weights in its own format (f32 host memory for the CPU,
//! bf16 device memory for CUDA). The model (`crate::model`) calls the [`Ops`] in order and
//! sees nothing else; the step runner (`crate::engine::runner`) drives the device side around
//! it. Nothing model-specific lives in a backend, and nothing backend-specific in the model.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod ops;
mod types;

pub use ops::Ops;
pub use types::{
    AttentionShape, ForwardBatch, GraphKey, KvDtype, KvLayout, NoGraph, Residual, SeqSlice,
    StepTiming,
};

use crate::error::{Error, Result};
use crate::sampling::StepSampling;
use crate::weights::{Fp8Tensor, HostTensor, RawTensor};

/// What putting a backend's memory to sleep, or waking it, did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SleepReport {
    /// Seconds the whole sleep or wake took.
    pub seconds: f64,
    /// Device memory released (sleep) or taken again (wake): the weights' and the KV pool's.
    pub device_bytes: usize,
    /// Weight bytes copied to pinned host memory (sleep) or back (wake).
    pub copied_bytes: usize,
    /// Seconds the weights' copy took.
    pub copy_seconds: f64,
}

/// The device side of a backend: memory and weights, the KV pool, a step's upload and
/// lifecycle, sampling, timing, and recording steps as graphs. The forward pass's math is
/// [`Ops`].
///
/// One step, as the step runner drives it: [`begin_step`](Self::begin_step) (the batch to
/// the device) → the model's [`Ops`], or [`replay`](Self::replay) of a recorded graph →
/// [`start_sampling`](Self::start_sampling) → [`sampled_tokens`](Self::sampled_tokens) or
/// [`to_host`](Self::to_host), which wait for the step and report the first failure of any
/// of its work.
pub trait Backend: Ops + Send {
    /// A recorded decode step ([`NoGraph`] where the backend records none).
    type Graph: Send;

    /// The KV layout this backend was made for.
    fn kv_layout(&self) -> KvLayout;
    /// Takes ownership of a weight matrix of shape `[out, in]`.
    fn matrix(&self, t: HostTensor) -> Result<Self::Matrix>;
    /// A weight matrix made of `parts` stacked along rows (QKV and gate/up fusion), copied
    /// straight from the file's bytes. `None` when this backend does not keep the parts'
    /// dtype as is; the caller then converts through [`matrix`](Self::matrix).
    fn matrix_raw(&self, _parts: &[RawTensor<'_>]) -> Option<Result<Self::Matrix>> {
        None
    }
    /// A projection matrix made of FP8 `parts` stacked along rows (QKV and gate/up fusion),
    /// kept in FP8 with their scales. `None` when this backend has no FP8 kernels; the caller
    /// then loads the parts dequantized ([`crate::weights::WeightSource::load_f32`]).
    fn matrix_fp8(&self, _parts: &[Fp8Tensor<'_>]) -> Option<Result<Self::Matrix>> {
        None
    }
    /// A projection (or, with `lm_head`, the LM head) made of `parts` stacked along rows,
    /// quantized at load straight from the file's dense bytes (the CPU with
    /// `quantization="q8_0"` or `"q4_0"`). `None` when this backend does not quantize these
    /// parts at load; the caller then loads them as [`matrix_raw`](Self::matrix_raw) or
    /// [`matrix`](Self::matrix) do.
    fn quantize_raw(
        &self,
        _parts: &[RawTensor<'_>],
        _lm_head: bool,
    ) -> Option<Result<Self::Matrix>> {
        None
    }
    /// Called on every projection matrix once it is loaded (not on the embeddings or the LM
    /// head): a backend that quantizes weights at load (CUDA, `quantization="fp8"`) converts
    /// it here. A matrix already in FP8 is returned as it is.
    fn projection(&self, m: Self::Matrix) -> Result<Self::Matrix> {
        Ok(m)
    }
    /// Takes ownership of a 1-D weight.
    fn vector(&self, t: HostTensor) -> Result<Self::Vector>;
    /// A zeroed activation buffer of `len` elements.
    fn buffer(&self, len: usize) -> Result<Self::Buf>;
    /// A zeroed buffer of `len` f32 values for logits (the LM head writes f32 on every
    /// backend, so log-probabilities do not pay for a narrower activation dtype).
    fn logits_buffer(&self, len: usize) -> Result<Self::Buf> {
        self.buffer(len)
    }
    /// Bytes the KV cache may take once weights and activation buffers are in place, when the
    /// backend sizes it from its memory (`None`: the engine's own default applies).
    fn kv_cache_budget_bytes(&self) -> Option<usize> {
        None
    }
    /// A KV cache of `num_blocks` blocks in this backend's [`KvLayout`].
    /// Layer `layer`'s `[k, v]` scales of an FP8 KV cache, from the checkpoint (a cached key
    /// is its code's value times `k`); given before the cache is made. Backends without an FP8
    /// cache ignore them.
    fn set_kv_cache_scales(&self, _layer: usize, _scales: [f32; 2]) {}

    fn kv_cache(&self, num_blocks: usize) -> Result<Self::KvCache>;
    /// Called once the weights are loaded: a backend that prepares something in the
    /// background (the CUDA backend compiles its kernels while weights load) finishes it here,
    /// so that an engine is ready to serve when it is returned.
    fn finish_loading(&self) -> Result<()> {
        Ok(())
    }
    /// Called once before the first step with the largest step the engine will run (rows,
    /// sequences, block-table entries per sequence), so that a backend can size its per-step
    /// buffers once (recorded graphs read them at fixed addresses).
    fn reserve_steps(
        &mut self,
        _rows: usize,
        _seqs: usize,
        _max_blocks_per_seq: usize,
    ) -> Result<()> {
        Ok(())
    }
    /// Starts a step: a device backend copies the batch description (ids, positions, slots,
    /// block tables) to the device here, and its operations read that copy rather than the
    /// host slices they are also given.
    fn begin_step(&mut self, _batch: &ForwardBatch) {}
    /// Starts picking the token of each of `sampling.rows` logits rows (`width` logits each)
    /// on the device, once the step's operations are enqueued; a no-op where the host picks
    /// them ([`sampled_tokens`](Self::sampled_tokens)'s default).
    fn start_sampling(&mut self, _logits: &Self::Buf, _sampling: &StepSampling, _width: usize) {}
    /// Waits for the step and returns the token of each logits row, picked by the rules of
    /// [`crate::sampling::sample_row`]; reports the first failure of the step's work. This
    /// default copies the logits and picks the tokens on the host.
    fn sampled_tokens(
        &mut self,
        logits: &Self::Buf,
        sampling: &StepSampling,
        width: usize,
    ) -> Result<Vec<u32>> {
        let mut host = self.to_host(logits, sampling.rows.len() * width)?;
        Ok(sampling.sample(&mut host, width))
    }
    /// Copies the first `len` values of a buffer to the host, as f32. Waits for the work
    /// enqueued so far, and reports the first failure of any of it (operations do not return
    /// errors themselves, so that a device backend can enqueue them without waiting).
    fn to_host(&mut self, x: &Self::Buf, len: usize) -> Result<Vec<f32>>;
    /// Whether a step's launch only enqueues its work, which the device computes while the
    /// host goes on (CUDA), rather than computing it there and then (the CPU). The engine
    /// schedules asynchronously by default where it does ([`crate::engine::EngineConfig`]).
    fn launches_ahead(&self) -> bool {
        false
    }
    /// Turns timing of each step on the device on (it is off by default): from then on
    /// [`step_timing`](Self::step_timing) reports the last step waited for. A backend that
    /// computes a step as it is launched (the CPU) has nothing to time and ignores this.
    fn time_steps(&mut self) {}
    /// The device time of the last step that was waited for, when
    /// [`time_steps`](Self::time_steps) is on.
    fn step_timing(&self) -> Option<StepTiming> {
        None
    }

    /// Whether this backend records decode steps as graphs and replays them (CUDA graphs:
    /// fixed shapes, no launch work on the host). The step runner pads decode steps to its
    /// graph sizes only where it does.
    fn records_graphs(&self) -> bool {
        false
    }
    /// The block-table widths (powers of two up to `max_blocks_per_seq`) at which a decode
    /// step of `rows` rows changes its launches: one graph per width listed covers every
    /// context length. Empty for a backend without graphs.
    fn graph_table_widths(&self, _rows: usize, _max_blocks_per_seq: usize) -> Vec<usize> {
        Vec::new()
    }
    /// What distinguishes the launches of the step begun last beyond its row count (part of
    /// its graph's [`GraphKey`]).
    fn graph_variant(&self) -> usize {
        0
    }
    /// Starts recording the operations that follow instead of running them.
    fn begin_capture(&mut self) -> Result<()> {
        Err(Error::Unsupported(
            "this backend does not record graphs".into(),
        ))
    }
    /// Ends the recording, returning its graph, or the first failure of a recorded operation.
    fn end_capture(&mut self) -> Result<Self::Graph> {
        Err(Error::Unsupported(
            "this backend does not record graphs".into(),
        ))
    }
    /// Runs a recorded step in place of its operations (the step begun last, whose batch
    /// has the graph's shape); a failure surfaces at the wait.
    fn replay(&mut self, _graph: &Self::Graph) {}

    /// After a step failed: `Some(why)` when the device can run nothing more (a sticky CUDA
    /// error such as an illegal address poisons the whole context), so that the engine is
    /// marked failed rather than failing every later request one by one.
    fn device_failure(&mut self) -> Option<String> {
        None
    }
    /// Whether [`sleep`](Self::sleep) is supported.
    fn can_sleep(&self) -> bool {
        false
    }
    /// Frees the device memory of the weights (kept in pinned host memory) and of the KV pool
    /// (its contents are dropped), keeping every address: compiled kernels, step buffers and
    /// recorded graphs stay as they are. Called only between steps, with no block of the pool
    /// in use. `Unsupported` where the backend cannot (the CPU's memory is the host's).
    fn sleep(&mut self) -> Result<SleepReport> {
        Err(Error::Unsupported(
            "this backend cannot sleep with its engine alive".into(),
        ))
    }
    /// Brings the memory back after [`sleep`](Self::sleep): the weights as they were, the KV
    /// pool empty, at the same addresses. A no-op when awake.
    fn wake(&mut self) -> Result<SleepReport> {
        Err(Error::Unsupported(
            "this backend cannot sleep with its engine alive".into(),
        ))
    }
}
