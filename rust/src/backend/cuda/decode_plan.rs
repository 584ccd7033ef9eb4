//! The decode plan: every decision about how decode attention splits the keys of a step's
//! one-token rows (split-KV / flash-decoding), in one place. The split count is part of a
//! decode graph's key (`Backend::graph_variant`), so it depends on the rows and the block
//! tables' width only; the fewest keys per split of a step is uploaded with the step, so that
//! one graph serves every context length.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::device_mem::DeviceMem;
use crate::backend::{AttentionShape, ForwardBatch};
use crate::error::Result;

/// `rows × splits` the split-KV decode scratch holds: a full GPU's worth of one-warp CTAs for
/// a few rows (see [`decode_splits`]).
const SPLIT_ROWS: usize = 1024;

/// One-warp decode attention CTAs an SM holds at once (26 KiB of shared memory each for
/// head_dim 128; see `kernels/cuda/decode_attention.cu`).
const DECODE_CTAS_PER_SM: usize = 8;
/// Fewest keys a split of decode attention gets when a step's rows alone would leave the GPU
/// idle: below this the combine costs more than the split saves (16 lost 13 % of one-row
/// decode against 64; 32 gained 1–3 % once the K/V loads moved before the kernel's wait,
/// kernels/cuda/NOTES.md).
pub const MIN_KEYS_PER_SPLIT: usize = 32;
/// Fewest keys a split gets in a large batch (rows × kv heads fill the GPU) of uneven rows.
/// Splits there only even out rows of different lengths — unsplit, the CTAs of the longest
/// rows run on alone at the end of the launch — so they are longer, and rows of a few hundred
/// keys are not split at all.
const BATCH_MIN_KEYS_PER_SPLIT: usize = 256;
/// A large batch whose longest row has at most this many times the mean length (×4) is even:
/// its rows are not split (each split adds its partial results and the combine pass: 7 % of
/// the attention time of 256 rows of 1,024 keys, `bench/attention_bench.py`).
const EVEN_ROWS_MAX_OVER_MEAN_X4: usize = 5;
/// `min_split_keys` that splits no row.
const NO_SPLIT_KEYS: usize = 1 << 24;
/// Splits launched for a large batch (`INFIRE_DECODE_BATCH_SPLITS` overrides it; 1: none):
/// rows of up to 4 × 256 keys are cut into pieces of at most 256.
pub const DEFAULT_BATCH_SPLITS: usize = 4;
/// Scratch of split-KV decode attention: per (row, split) one partial output and one
/// log-sum-exp per query head, f32.
pub struct SplitBuffers {
    pub partial_out: u64,
    pub partial_lse: u64,
    /// Most `rows × splits` the buffers hold.
    pub rows_times_splits: usize,
    /// Longest context the step's block tables can hold (their width × block size): the
    /// split count depends on it rather than on the exact lengths, so that it repeats from
    /// step to step (a captured graph keeps its grid).
    pub max_context: usize,
    /// The GPU's streaming multiprocessors.
    pub sm_count: usize,
    /// Splits launched when the rows fill the GPU ([`DEFAULT_BATCH_SPLITS`]).
    pub batch_splits: usize,
    /// Fewest keys per split of a few rows ([`MIN_KEYS_PER_SPLIT`]).
    pub min_keys: usize,
}

/// How decode attention splits the keys of a step's rows: `splits` CTAs are launched per (row,
/// kv head), and a row of `len` keys uses `clamp(ceil(len / min_keys), 1, splits)` of them
/// (`used_splits` in decode_attention.cu), where the step's `min_keys` is
/// [`step_min_split_keys`] of this rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplits {
    pub splits: usize,
    pub min_keys: usize,
    /// The large-batch rule: rows of about equal length are not split.
    pub batch: bool,
}

/// The fewest keys per split of a step whose decode rows have context lengths `lens` (padding
/// rows, of length 0, left out) under `rule`: `rule.min_keys`, or [`NO_SPLIT_KEYS`] for a
/// large batch of even rows (none longer than 5/4 of the mean). Uploaded with the step, so that
/// one captured graph serves both.
pub fn step_min_split_keys(rule: DecodeSplits, lens: impl Iterator<Item = usize>) -> usize {
    if !rule.batch || rule.splits == 1 {
        return rule.min_keys;
    }
    let (mut n, mut sum, mut max) = (0usize, 0usize, 0usize);
    for len in lens.filter(|&l| l > 0) {
        n += 1;
        sum += len;
        max = max.max(len);
    }
    // max > 5/4 × mean  ⇔  4 × n × max > 5 × sum
    if 4 * n * max > EVEN_ROWS_MAX_OVER_MEAN_X4 * sum {
        rule.min_keys
    } else {
        NO_SPLIT_KEYS
    }
}

/// How decode attention splits the keys of this step's rows, within the scratch buffers.
///
/// - Few rows (fewer (row, kv head) CTAs than half of what the GPU holds at once): as many
///   splits as fill the GPU — never more, so that equal rows finish in one wave rather than
///   leaving a tail — with no split shorter than [`MIN_KEYS_PER_SPLIT`] at the longest context
///   the block tables hold.
/// - A large batch: a fixed [`SplitBuffers::batch_splits`] with splits of at least
///   [`BATCH_MIN_KEYS_PER_SPLIT`] keys when the rows' lengths are uneven (none when they are
///   even: [`step_min_split_keys`]), so that a long row runs as several CTAs beside the short
///   ones. Fixed, so that a decode graph of these rows serves every context length.
pub fn decode_splits(rows: usize, shape: AttentionShape, buf: &SplitBuffers) -> DecodeSplits {
    let ctas = rows * shape.num_kv_heads * decode_head_tiles(shape);
    let resident = buf.sm_count * DECODE_CTAS_PER_SM;
    let by_buffer = buf.rows_times_splits / rows.max(1);
    if ctas > 0 && 2 * ctas > resident {
        return DecodeSplits {
            splits: buf.batch_splits.min(by_buffer).max(1),
            min_keys: BATCH_MIN_KEYS_PER_SPLIT,
            batch: true,
        };
    }
    let by_gpu = resident.checked_div(ctas).unwrap_or(1);
    let by_keys = buf.max_context.div_ceil(buf.min_keys.max(1));
    DecodeSplits {
        splits: by_gpu.min(by_keys).min(by_buffer).max(1),
        min_keys: buf.min_keys.max(1),
        batch: false,
    }
}

/// CTAs per (row, kv head) of decode attention: one per 16 query heads of the GQA group.
pub fn decode_head_tiles(shape: AttentionShape) -> usize {
    (shape.num_heads / shape.num_kv_heads).div_ceil(16)
}

/// The split policy of one GPU and model, with its scratch.
pub struct DecodePlan {
    shape: AttentionShape,
    block_size: usize,
    /// Streaming multiprocessors.
    sm_count: usize,
    /// Fewest keys per split of decode attention at a few rows ([`MIN_KEYS_PER_SPLIT`], or
    /// `Tuning::decode_min_split_keys`).
    min_split_keys: usize,
    /// Splits of decode attention in a large batch ([`DEFAULT_BATCH_SPLITS`], or
    /// `Tuning::decode_batch_splits`; 1 turns them off).
    batch_splits: usize,
    /// Partial outputs, then log-sum-exps, of split-KV decode attention.
    scratch: DeviceMem,
    lse_offset: usize,
}

impl DecodePlan {
    /// The plan for `shape` and `block_size` on a GPU of `sm_count` SMs; `min_split_keys` and
    /// `batch_splits` override the defaults (measurement knobs).
    pub fn new(
        stream: &Arc<CudaStream>,
        shape: AttentionShape,
        block_size: usize,
        sm_count: usize,
        min_split_keys: Option<usize>,
        batch_splits: Option<usize>,
    ) -> Result<DecodePlan> {
        let lse_offset = SPLIT_ROWS * shape.q_size() * 4;
        let scratch = DeviceMem::zeroed(stream, lse_offset + SPLIT_ROWS * shape.num_heads * 4)?;
        Ok(DecodePlan {
            shape,
            block_size,
            sm_count,
            min_split_keys: min_split_keys.unwrap_or(MIN_KEYS_PER_SPLIT).max(1),
            batch_splits: batch_splits.unwrap_or(DEFAULT_BATCH_SPLITS).max(1),
            scratch,
            lse_offset,
        })
    }

    /// The split scratch and policy for block tables `table_width` blocks wide.
    pub fn buffers(&self, table_width: usize) -> SplitBuffers {
        SplitBuffers {
            partial_out: self.scratch.ptr,
            partial_lse: self.scratch.ptr + self.lse_offset as u64,
            rows_times_splits: SPLIT_ROWS,
            max_context: table_width * self.block_size,
            sm_count: self.sm_count,
            batch_splits: self.batch_splits,
            min_keys: self.min_split_keys,
        }
    }

    /// The splits decode attention launches for a decode step of `rows` rows whose block
    /// tables are `table_width` blocks wide (a decode graph's variant).
    pub fn splits(&self, rows: usize, table_width: usize) -> usize {
        decode_splits(rows, self.shape, &self.buffers(table_width)).splits
    }

    /// The fewest keys per split of decode attention in `batch` (uploaded with it): the split
    /// rule of its one-token rows (all of its rows in a decode step, padding included) with
    /// their context lengths. The block tables' width only sizes the split count of a few
    /// rows, which this does not depend on, so any width serves.
    pub fn step_min_split_keys(&self, batch: &ForwardBatch) -> usize {
        let one_token = || batch.seqs.iter().filter(|q| q.query_len == 1);
        let rule = decode_splits(one_token().count(), self.shape, &self.buffers(1));
        step_min_split_keys(rule, one_token().map(|q| q.context_len))
    }

    /// The block-table widths at which a decode step of `rows` rows changes its split count:
    /// per count, the narrowest power of two (the step description rounds widths up to one),
    /// up to the first power of two ≥ `max_blocks_per_seq`.
    pub fn graph_table_widths(&self, rows: usize, max_blocks_per_seq: usize) -> Vec<usize> {
        let (mut widths, mut last, mut width) = (Vec::new(), None, 1);
        loop {
            let splits = self.splits(rows, width);
            if last != Some(splits) {
                widths.push(width);
                last = Some(splits);
            }
            if width >= max_blocks_per_seq {
                return widths;
            }
            width *= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(max_context: usize) -> SplitBuffers {
        SplitBuffers {
            partial_out: 0,
            partial_lse: 0,
            rows_times_splits: 1024,
            max_context,
            sm_count: 132,
            batch_splits: DEFAULT_BATCH_SPLITS,
            min_keys: MIN_KEYS_PER_SPLIT,
        }
    }

    fn splits(rows: usize, shape: AttentionShape, buf: &SplitBuffers) -> usize {
        decode_splits(rows, shape, buf).splits
    }

    #[test]
    fn decode_splits_fill_the_gpu_only_when_rows_leave_it_idle() {
        let shape = AttentionShape {
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
        };
        // 132 SMs hold 1056 CTAs. One row, long context: 1056 / 8 = 132 splits.
        assert_eq!(splits(1, shape, &buf(1 << 16)), 132);
        // Short context: no split shorter than 32 keys.
        assert_eq!(splits(1, shape, &buf(128)), 4);
        // Never more CTAs than the GPU holds at once: 64 rows x 8 kv heads x 2 = 1024.
        assert_eq!(splits(64, shape, &buf(8192)), 2);
        assert_eq!(decode_splits(64, shape, &buf(8192)).min_keys, 32);
        assert!(!decode_splits(64, shape, &buf(8192)).batch);
        // Enough (row, kv head) pairs already: the batch rule, whatever the context.
        let batch = DecodeSplits {
            splits: 4,
            min_keys: 256,
            batch: true,
        };
        assert_eq!(decode_splits(67, shape, &buf(8192)), batch);
        assert_eq!(decode_splits(256, shape, &buf(8192)), batch);
        assert_eq!(decode_splits(256, shape, &buf(16)), batch);
        let off = SplitBuffers {
            batch_splits: 1,
            ..buf(8192)
        };
        assert_eq!(splits(256, shape, &off), 1);
        // Never more rows × splits than the scratch holds.
        let mha = AttentionShape {
            num_kv_heads: 1,
            num_heads: 8,
            ..shape
        };
        assert!(splits(200, mha, &buf(1 << 20)) * 200 <= 1024);
        assert_eq!(splits(512, shape, &buf(8192)), 2);
        assert_eq!(splits(2048, shape, &buf(8192)), 1);
        assert_eq!(splits(0, shape, &buf(8192)), 1);
        // A GQA group of 32 heads takes two CTAs per (row, kv head).
        let mqa = AttentionShape {
            num_kv_heads: 1,
            ..shape
        };
        assert_eq!(decode_head_tiles(mqa), 2);
        assert_eq!(splits(4, mqa, &buf(1 << 16)), 132);
    }

    #[test]
    fn a_large_batch_splits_only_uneven_rows() {
        let batch = DecodeSplits {
            splits: 4,
            min_keys: 256,
            batch: true,
        };
        let keys = |lens: &[usize]| step_min_split_keys(batch, lens.iter().copied());
        // Even rows (padding rows of length 0 left out): no split.
        assert_eq!(keys(&[1024; 256]), NO_SPLIT_KEYS);
        assert_eq!(keys(&[1000, 1100, 1200, 0, 0]), NO_SPLIT_KEYS);
        // The longest above 5/4 of the mean: splits of at least 256 keys.
        assert_eq!(keys(&[100, 2000, 1000]), 256);
        assert_eq!(keys(&[1000, 1000, 1000, 1400]), 256);
        assert_eq!(keys(&[0, 0]), NO_SPLIT_KEYS);
        // Few rows, or splits off: the rule's own.
        let few = DecodeSplits {
            batch: false,
            min_keys: 64,
            splits: 16,
        };
        assert_eq!(step_min_split_keys(few, [100, 2000].into_iter()), 64);
        let off = DecodeSplits { splits: 1, ..batch };
        assert_eq!(step_min_split_keys(off, [100, 2000].into_iter()), 256);
    }
}
