//! The attention kernels: prefill attention over 64-row query tiles, decode attention over
//! one-token rows (split over the keys as the decode plan says) and its combine pass.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::{launch_raw, param, Kernels};
use crate::backend::cuda::decode_plan::{decode_head_tiles, decode_splits, SplitBuffers};
use crate::backend::cuda::step_meta::StepMeta;
use crate::backend::AttentionShape;
use crate::error::Result;

/// The scalar arguments both attention kernels take: the qkv row width and the softmax scale
/// 1/√head_dim.
fn attention_args(shape: AttentionShape) -> (i32, f32) {
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    (shape.qkv_width() as i32, scale)
}

impl Kernels {
    /// Attention of every row of the step. A decode-only step runs the decode kernel over all
    /// rows (split over the keys when the rows leave SMs idle); a step with multi-token
    /// queries runs the prefill kernel over their 64-row tiles and the decode kernel over the
    /// one-token sequences' rows. Both on tensor cores. Block tables cover every position (the
    /// batch's invariant).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        stream: &Arc<CudaStream>,
        qkv: u64,
        caches: (u64, u64),
        kv_scales: [f32; 2],
        out: u64,
        meta: &StepMeta,
        shape: AttentionShape,
        split_buf: &SplitBuffers,
    ) -> Result<()> {
        let ((k_cache, v_cache), [k_scale, v_scale]) = (caches, kv_scales);
        let decode = |rows| {
            let args = (caches, kv_scales);
            self.decode_attention(stream, qkv, args, out, meta, shape, split_buf, rows)
        };
        if meta.max_query_len <= 1 {
            return decode(None);
        }
        if meta.num_prefill_tiles > 0 {
            let (width, scale) = attention_args(shape);
            let max_blocks = meta.max_blocks as i32;
            let (tables, tiles) = (meta.block_tables(), meta.prefill_tiles());
            let (q_start, q_len, ctx_len) = (
                meta.seq_query_start(),
                meta.seq_query_len(),
                meta.seq_context_len(),
            );
            let grid = (meta.num_prefill_tiles, shape.num_heads, 1);
            launch!(self, stream, &self.prefill_attention, grid, 128;
                qkv, k_cache, v_cache, out, q_start, q_len, ctx_len, tables, max_blocks, width,
                scale, tiles, k_scale, v_scale)?;
        }
        if meta.num_decode_rows > 0 {
            decode(Some((meta.decode_rows(), meta.num_decode_rows)))?;
        }
        Ok(())
    }

    /// Decode attention (and its combine pass when split) over every row of the step, or over
    /// the `n` rows listed at device address `list` when `rows` is `Some((list, n))`.
    #[allow(clippy::too_many_arguments)]
    fn decode_attention(
        &self,
        stream: &Arc<CudaStream>,
        qkv: u64,
        ((k_cache, v_cache), [k_scale, v_scale]): ((u64, u64), [f32; 2]),
        out: u64,
        meta: &StepMeta,
        shape: AttentionShape,
        split_buf: &SplitBuffers,
        rows: Option<(u64, usize)>,
    ) -> Result<()> {
        let (row_list, n) = rows.unwrap_or((0, meta.rows));
        let (width, scale) = attention_args(shape);
        let (tables, table_width) = (meta.block_tables(), meta.table_width());
        let (row_seq, row_pos) = (meta.row_seq(), meta.positions());
        let splits = decode_splits(n, shape, split_buf).splits;
        let (splits32, min_keys) = (splits as i32, meta.min_split_keys());
        let (p_out, p_lse) = (split_buf.partial_out, split_buf.partial_lse);
        let grid = (n, shape.num_kv_heads * decode_head_tiles(shape), splits);
        launch!(self, stream, &self.decode_attention, grid, 32;
            qkv, k_cache, v_cache, out, row_seq, row_pos, tables, table_width, width, scale,
            p_out, p_lse, splits32, min_keys, row_list, k_scale, v_scale)?;
        if splits == 1 {
            return Ok(());
        }
        let grid = (n, shape.num_heads, 1);
        let f = &self.attention_combine;
        launch!(self, stream, f, grid, shape.head_dim as u32;
            p_out, p_lse, out, splits32, min_keys, row_list, row_pos)
    }
}
