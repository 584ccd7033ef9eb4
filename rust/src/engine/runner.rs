//! The step runner: owns the model, its KV cache and step buffers on one backend, and the
//! recorded decode graphs. Per step it decides once whether to replay a graph or run the
//! model's operations, then starts the choice of the step's tokens; [`ModelRunner::collect`]
//! waits for them (or for the logits).
//!
//! Decode graphs (a backend that [records](Backend::records_graphs) them: CUDA). A decode
//! step is ~350 small launches; replayed as one graph, it costs the host one launch and the
//! device no gaps between kernels. A graph repeats fixed shapes, so a decode-only batch is
//! padded to a graph size ([`graph_size`]: 1, 2, 4, then every multiple of 8 up to 256, as
//! vLLM's capture sizes): padding rows have position and slot `u32::MAX`, attend to nothing,
//! write no KV and take a (dropped) greedy token. What else a graph bakes in the backend names
//! as the step's [variant](Backend::graph_variant) (CUDA: decode attention's split count, a
//! function of the rows and the block tables' width): the key is (rows, variant).
//!
//! Every graph is captured at start-up by [`ModelRunner::capture_graphs`], one capture per
//! (size, table width that changes the variant): an eager run of each size first creates what
//! a step needs that cannot be made inside a capture (cuBLASLt's plans for the size, the RoPE
//! table on the device), then each variant's forward pass is recorded. A step whose key has no
//! graph runs eagerly; nothing is captured while serving.

use std::collections::HashMap;

use super::batch::pad_decode_batch;
use crate::backend::{Backend, ForwardBatch, GraphKey};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{LlamaModel, StepBuffers};
use crate::sampling::{RowSampling, StepSampling};
use crate::weights::WeightSource;

/// Decode batch sizes that get a graph: a batch of `n` rows is padded to the smallest size
/// ≥ `n`, so at most 7 rows of padding. Large batches are compute-bound (256 rows: ~4 TFLOP
/// of GEMMs per step for an 8B model), and a padded row costs as much as a real one there.
pub const GRAPH_SIZES: [usize; 35] = {
    let mut b = [0; 35];
    (b[0], b[1], b[2]) = (1, 2, 4);
    let mut i = 3;
    while i < 35 {
        b[i] = 8 * (i - 2);
        i += 1;
    }
    b
};

/// The graph size a decode batch of `rows` rows is padded to; `None` above the largest.
pub fn graph_size(rows: usize) -> Option<usize> {
    GRAPH_SIZES.iter().copied().find(|&b| b >= rows && rows > 0)
}

/// Whether `batch` is a decode-only step: one row per sequence, each wanting its logits.
fn is_decode(batch: &ForwardBatch) -> bool {
    let rows = batch.num_tokens();
    batch.seqs.len() == rows && batch.logits_rows.len() == rows
}

/// Sizes of what the runner allocates.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSizes {
    /// Most rows (tokens) of a step.
    pub max_tokens: usize,
    /// Most logits rows of a step, and so most sequences (each running sequence has at most
    /// one row of logits, and prompt-logprob rows only add to that).
    pub max_logits: usize,
    /// Block-table entries of the longest sequence.
    pub max_blocks_per_seq: usize,
    /// Tokens the KV cache holds; `None`: what the backend's memory budget allows (or
    /// `default_kv_bytes` where it has none).
    pub kv_cache_tokens: Option<usize>,
    /// KV bytes of a backend without a budget of its own (the CPU).
    pub default_kv_bytes: usize,
}

/// A step the runner launched and has not collected.
pub struct LaunchedStep {
    /// Logits rows of the step (padding rows included).
    pub logits_rows: usize,
    /// How the step's tokens are picked; `None`: the logits come back instead.
    pub sampling: Option<StepSampling>,
}

/// The model on its backend, with its KV cache, step buffers and decode graphs.
pub struct ModelRunner<B: Backend> {
    model: LlamaModel<B>,
    cache: B::KvCache,
    bufs: StepBuffers<B>,
    num_blocks: usize,
    graphs: HashMap<GraphKey, B::Graph>,
    /// Dropped last (fields drop in order): what the fields above hold is freed before the
    /// backend gives its share of the card back, so an engine that claims it next finds the
    /// memory free. (With this order, and the context released with the last engine, an
    /// engine made after another's whole teardown failed its first cuBLASLt GEMM on an H100;
    /// the context is now kept for the process, `backend/cuda/share.rs`.)
    backend: B,
}

impl<B: Backend> ModelRunner<B> {
    /// Loads the model's weights into `backend`, allocates the step buffers and the KV cache
    /// (what the backend can spare once weights and buffers are in place), and readies the
    /// backend for steps of `sizes`. Graphs are captured by `capture_graphs`.
    pub fn load(
        mut backend: B,
        config: ModelConfig,
        weights: &dyn WeightSource,
        sizes: RunnerSizes,
    ) -> Result<Self> {
        let model = LlamaModel::load(&backend, config, weights)?;
        let bufs = StepBuffers::new(&backend, &model.config, sizes.max_tokens, sizes.max_logits)?;
        // The per-step buffers (the FP8 GEMMs' scratch among them) before the KV cache, so
        // that its budget is what they leave.
        backend.finish_loading()?;
        backend.reserve_steps(sizes.max_tokens, sizes.max_logits, sizes.max_blocks_per_seq)?;
        let layout = backend.kv_layout();
        let per_token = layout.bytes_per_token();
        let budget = backend.kv_cache_budget_bytes();
        let kv_tokens = sizes
            .kv_cache_tokens
            .unwrap_or_else(|| budget.unwrap_or(sizes.default_kv_bytes) / per_token);
        let num_blocks = kv_tokens / layout.block_size;
        if let (None, Some(bytes), 0) = (sizes.kv_cache_tokens, budget, num_blocks) {
            return Err(Error::InvalidConfig(format!(
                "no GPU memory is left for the KV cache ({} MiB for {} tokens of {} KiB): \
                 raise gpu_memory_utilization or lower max_num_batched_tokens / max_num_seqs",
                bytes >> 20,
                layout.block_size,
                per_token >> 10
            )));
        }
        if num_blocks == 0 {
            return Err(Error::InvalidConfig(format!(
                "kv_cache_tokens {kv_tokens} is less than one block of {} tokens",
                layout.block_size
            )));
        }
        let cache = backend.kv_cache(num_blocks)?;
        Ok(ModelRunner {
            backend,
            model,
            cache,
            bufs,
            num_blocks,
            graphs: HashMap::new(),
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// Blocks of the KV cache.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The largest decode step that can run as a graph.
    fn max_graph_rows(&self) -> usize {
        self.bufs.max_tokens.min(self.bufs.max_logits)
    }

    /// The row count `batch` is padded to, when it is a decode step that runs as a graph.
    fn graph_rows(&self, batch: &ForwardBatch) -> Option<usize> {
        if !self.backend.records_graphs() || !is_decode(batch) {
            return None;
        }
        graph_size(batch.num_tokens()).filter(|&n| n <= self.max_graph_rows())
    }

    /// Launches one step without waiting for it: pads a decode batch to its graph size (and
    /// the sampling with greedy rows for the padding), then runs it (see `run`). `sampling` is
    /// called once the forward pass is enqueued, so that the host work it does (a grammar's
    /// mask) overlaps the device's.
    pub fn launch(
        &mut self,
        batch: &mut ForwardBatch,
        sampling: impl FnOnce() -> Option<StepSampling>,
    ) -> LaunchedStep {
        let graph_rows = self.graph_rows(batch);
        if let Some(rows) = graph_rows {
            pad_decode_batch(batch, rows);
        }
        self.run(batch, || {
            let mut sampling = sampling();
            if let (Some(rows), Some(s)) = (graph_rows, &mut sampling) {
                s.rows.resize(rows, RowSampling::GREEDY);
            }
            sampling
        })
    }

    /// Begins the step on the backend, replays its graph if one was captured for its key or
    /// runs the model's operations, and starts picking its tokens.
    fn run(
        &mut self,
        batch: &ForwardBatch,
        sampling: impl FnOnce() -> Option<StepSampling>,
    ) -> LaunchedStep {
        self.backend.begin_step(batch);
        let recorded = !self.graphs.is_empty() && is_decode(batch);
        let key = recorded.then(|| GraphKey {
            rows: batch.num_tokens(),
            variant: self.backend.graph_variant(),
        });
        match key.and_then(|k| self.graphs.get(&k)) {
            Some(graph) => self.backend.replay(graph),
            None => {
                let (cache, bufs) = (&mut self.cache, &mut self.bufs);
                self.model.forward(&self.backend, batch, cache, bufs);
            }
        }
        let sampling = sampling();
        if let Some(s) = &sampling {
            let vocab = self.model.config.vocab_size;
            self.backend.start_sampling(self.bufs.logits(), s, vocab);
        }
        LaunchedStep {
            logits_rows: batch.logits_rows.len(),
            sampling,
        }
    }

    /// Waits for `step` and returns its logits (when it was launched without sampling) or its
    /// tokens, or the first failure of its work.
    pub fn collect(&mut self, step: &LaunchedStep) -> Result<(Vec<f32>, Option<Vec<u32>>)> {
        let vocab = self.model.config.vocab_size;
        let logits = self.bufs.logits();
        match &step.sampling {
            Some(s) => Ok((
                Vec::new(),
                Some(self.backend.sampled_tokens(logits, s, vocab)?),
            )),
            None => Ok((
                self.backend.to_host(logits, step.logits_rows * vocab)?,
                None,
            )),
        }
    }

    /// Captures the graph of every decode step shape that can occur with up to `max_num_seqs`
    /// sequences and block tables of up to `max_blocks_per_seq` entries (see the module's
    /// doc). The padding rows attend to nothing; the first one's block table (of block 0)
    /// only sets the width. Returns the number of graphs.
    pub fn capture_graphs(
        &mut self,
        max_num_seqs: usize,
        max_blocks_per_seq: usize,
    ) -> Result<usize> {
        if !self.backend.records_graphs() {
            return Ok(0);
        }
        let largest = graph_size(max_num_seqs)
            .unwrap_or(max_num_seqs)
            .min(self.max_graph_rows());
        for rows in GRAPH_SIZES.into_iter().filter(|&r| r <= largest) {
            let greedy = StepSampling {
                rows: vec![RowSampling::GREEDY; rows],
                penalty_tokens: Vec::new(),
            };
            let widths = self.backend.graph_table_widths(rows, max_blocks_per_seq);
            for (i, width) in widths.into_iter().enumerate() {
                let mut batch = ForwardBatch::default();
                pad_decode_batch(&mut batch, rows);
                batch.seqs[0].block_table = vec![0; width];
                if i == 0 {
                    let warm_up = self.run(&batch, || Some(greedy.clone()));
                    self.collect(&warm_up)?;
                }
                self.capture(&batch)?;
            }
        }
        Ok(self.graphs.len())
    }

    /// Records the forward pass of `batch` as the graph of its key.
    fn capture(&mut self, batch: &ForwardBatch) -> Result<()> {
        self.backend.begin_step(batch);
        let key = GraphKey {
            rows: batch.num_tokens(),
            variant: self.backend.graph_variant(),
        };
        self.backend.begin_capture()?;
        let (cache, bufs) = (&mut self.cache, &mut self.bufs);
        self.model.forward(&self.backend, batch, cache, bufs);
        let graph = self.backend.end_capture()?;
        self.graphs.insert(key, graph);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_sizes_cover_every_batch_up_to_256_with_little_padding() {
        assert_eq!(graph_size(0), None);
        assert_eq!(graph_size(1), Some(1));
        assert_eq!(graph_size(3), Some(4));
        assert_eq!(graph_size(5), Some(8));
        assert_eq!(graph_size(65), Some(72));
        assert_eq!(graph_size(256), Some(256));
        assert_eq!(graph_size(257), None);
        for n in 1..=256 {
            let b = graph_size(n).unwrap();
            assert!(b >= n && b - n < 8, "{n} -> {b}");
        }
    }
}
