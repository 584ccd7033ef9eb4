//! A step's batch description in device memory: one packed `i32` array uploaded once per
//! step, which the kernels index into.
//!
//! Layout (each part starts at the offset kept in [`StepMeta`]): `table_width[1] |
//! min_split_keys[1] | token_ids[rows] | positions[rows] | slots[rows] | row_seq[rows] |
//! logits_rows[n] | seq_query_start[s] | seq_query_len[s] | seq_context_len[s] |
//! block_tables[s × max_blocks] | prefill_tiles[2 × t] | decode_rows[d]`.
//! `row_seq` maps a row to its sequence's index in the batch; a row's causal limit is its
//! position. `table_width` is the block tables' row width, on the device so that decode
//! attention in a captured graph reads the current one; so is `min_split_keys`, the fewest keys
//! per split of decode attention in this step (`kernels::step_min_split_keys`). The last two
//! parts split the attention of a step with a multi-token query: one (sequence, first query
//! row) pair per 64-row tile of each sequence whose query has several tokens (for
//! `prefill_attention`), and the row of each one-token sequence (for `decode_attention`). A
//! decode-only step leaves them empty.

use std::sync::Arc;

use cudarc::driver::{result, CudaStream};

use super::device_mem::{cuda_err, DeviceMem};
use crate::backend::ForwardBatch;
use crate::error::Result;

/// Query rows per CTA of `prefill_attention` (its `Q_TILE`).
const PREFILL_TILE: usize = 64;

/// Device copy of the current step's [`ForwardBatch`], and the offsets of its parts.
pub struct StepMeta {
    mem: DeviceMem,
    host: Vec<i32>,
    pub rows: usize,
    pub num_seqs: usize,
    pub num_logits: usize,
    pub max_blocks: usize,
    /// Longest `query_len` of the step (1 for a decode-only step).
    pub max_query_len: usize,
    /// Entries of `prefill_tiles` and `decode_rows`.
    pub num_prefill_tiles: usize,
    pub num_decode_rows: usize,
    off_tokens: usize,
    off_positions: usize,
    off_slots: usize,
    off_row_seq: usize,
    off_logits: usize,
    off_q_start: usize,
    off_q_len: usize,
    off_ctx: usize,
    off_tables: usize,
    off_tiles: usize,
    off_decode_rows: usize,
}

impl StepMeta {
    pub fn new(stream: &Arc<CudaStream>) -> Result<StepMeta> {
        Ok(StepMeta {
            mem: DeviceMem::zeroed(stream, 4 << 10)?,
            host: Vec::new(),
            rows: 0,
            num_seqs: 0,
            num_logits: 0,
            max_blocks: 0,
            max_query_len: 0,
            num_prefill_tiles: 0,
            num_decode_rows: 0,
            off_tokens: 0,
            off_positions: 0,
            off_slots: 0,
            off_row_seq: 0,
            off_logits: 0,
            off_q_start: 0,
            off_q_len: 0,
            off_ctx: 0,
            off_tables: 0,
            off_tiles: 0,
            off_decode_rows: 0,
        })
    }

    /// Packs `batch` and enqueues its copy to the device. Returns whether the device array
    /// moved (it grows when a step needs more room), which invalidates captured graphs.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        batch: &ForwardBatch,
        min_split_keys: usize,
    ) -> Result<bool> {
        let rows = batch.num_tokens();
        let s = batch.seqs.len();
        let max_blocks = batch
            .seqs
            .iter()
            .map(|q| q.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1)
            // A power of two, so that a decode graph's block-table width changes rarely.
            .next_power_of_two();
        let h = &mut self.host;
        h.clear();
        h.push(max_blocks as i32);
        h.push(min_split_keys as i32);
        self.off_tokens = h.len();
        h.extend(batch.token_ids.iter().map(|&t| t as i32));
        self.off_positions = h.len();
        h.extend(batch.positions.iter().map(|&p| p as i32));
        self.off_slots = h.len();
        h.extend(batch.slot_mapping.iter().map(|&p| p as i32));
        self.off_row_seq = h.len();
        for (i, q) in batch.seqs.iter().enumerate() {
            h.extend(std::iter::repeat_n(i as i32, q.query_len));
        }
        self.off_logits = h.len();
        h.extend(batch.logits_rows.iter().map(|&r| r as i32));
        self.off_q_start = h.len();
        h.extend(batch.seqs.iter().map(|q| q.query_start as i32));
        self.off_q_len = h.len();
        h.extend(batch.seqs.iter().map(|q| q.query_len as i32));
        self.off_ctx = h.len();
        h.extend(batch.seqs.iter().map(|q| q.context_len as i32));
        self.off_tables = h.len();
        for q in &batch.seqs {
            h.extend(q.block_table.iter().map(|&b| b as i32));
            h.extend(std::iter::repeat_n(0, max_blocks - q.block_table.len()));
        }
        let max_query_len = batch.seqs.iter().map(|q| q.query_len).max().unwrap_or(0);
        self.off_tiles = h.len();
        if max_query_len > 1 {
            for (i, q) in batch
                .seqs
                .iter()
                .enumerate()
                .filter(|(_, q)| q.query_len > 1)
            {
                for first in (0..q.query_len).step_by(PREFILL_TILE) {
                    h.extend([i as i32, first as i32]);
                }
            }
        }
        self.num_prefill_tiles = (h.len() - self.off_tiles) / 2;
        self.off_decode_rows = h.len();
        if max_query_len > 1 {
            let one_token = batch.seqs.iter().filter(|q| q.query_len == 1);
            h.extend(one_token.map(|q| q.query_start as i32));
        }
        self.num_decode_rows = h.len() - self.off_decode_rows;
        self.rows = rows;
        self.num_seqs = s;
        self.num_logits = batch.logits_rows.len();
        self.max_blocks = max_blocks;
        self.max_query_len = max_query_len;
        let moved = self.hold(stream, self.host.len() * 4)?;
        // SAFETY: the device array holds the host array, which is not touched again until
        // the next step, after the engine has synchronized on this step's results.
        unsafe { result::memcpy_htod_async(self.mem.ptr, &self.host[..], stream.cu_stream()) }
            .map_err(cuda_err)?;
        Ok(moved)
    }

    /// Makes room for steps of up to `rows` rows and `seqs` sequences whose block tables
    /// have up to `max_blocks` entries, so that the device array does not move (which would
    /// throw away the captured graphs) while serving. Returns whether it moved now.
    pub fn reserve(
        &mut self,
        stream: &Arc<CudaStream>,
        rows: usize,
        seqs: usize,
        max_blocks: usize,
    ) -> Result<bool> {
        let tiles = rows.div_ceil(PREFILL_TILE) + seqs;
        let words =
            2 + 5 * rows + 3 * seqs + seqs * max_blocks.next_power_of_two() + 2 * tiles + seqs;
        self.hold(stream, words * 4)
    }

    /// Grows the device array to hold `bytes` (to a power of two, once the work that may read
    /// the old one is done). Returns whether it moved.
    fn hold(&mut self, stream: &Arc<CudaStream>, bytes: usize) -> Result<bool> {
        if bytes > self.mem.bytes() {
            stream.synchronize().map_err(cuda_err)?;
        }
        self.mem.grow(stream, bytes)
    }

    fn at(&self, off: usize) -> u64 {
        self.mem.ptr + (off * 4) as u64
    }
    /// The block tables' row width (one `i32`).
    pub fn table_width(&self) -> u64 {
        self.at(0)
    }
    /// The fewest keys per split of decode attention in this step (one `i32`).
    pub fn min_split_keys(&self) -> u64 {
        self.at(1)
    }
    pub fn token_ids(&self) -> u64 {
        self.at(self.off_tokens)
    }
    pub fn positions(&self) -> u64 {
        self.at(self.off_positions)
    }
    pub fn slots(&self) -> u64 {
        self.at(self.off_slots)
    }
    pub fn row_seq(&self) -> u64 {
        self.at(self.off_row_seq)
    }
    pub fn logits_rows(&self) -> u64 {
        self.at(self.off_logits)
    }
    pub fn seq_query_start(&self) -> u64 {
        self.at(self.off_q_start)
    }
    pub fn seq_query_len(&self) -> u64 {
        self.at(self.off_q_len)
    }
    pub fn seq_context_len(&self) -> u64 {
        self.at(self.off_ctx)
    }
    pub fn block_tables(&self) -> u64 {
        self.at(self.off_tables)
    }
    pub fn prefill_tiles(&self) -> u64 {
        self.at(self.off_tiles)
    }
    pub fn decode_rows(&self) -> u64 {
        self.at(self.off_decode_rows)
    }
}
