//! Causal attention over the paged KV cache on the CPU.
//!
//! Each query row attends to the positions `0..=pos` of its own sequence, read through the
//! sequence's block table, so prefill, chunked prefill, prefix-cache hits and decode are the
//! same code. Work is split over (row, kv head) pairs; the query heads of one GQA group share
//! the keys they read.

use rayon::prelude::*;

use super::CpuKvCache;
use crate::backend::{AttentionShape, ForwardBatch};

/// `out[r, h*hd..(h+1)*hd] = softmax(q_h · Kᵀ / sqrt(hd)) · V` for every row `r` and query
/// head `h`, with K and V the cached keys and values of `r`'s sequence up to `r`'s position.
pub(super) fn paged_attention(
    qkv: &[f32],
    batch: &ForwardBatch,
    shape: AttentionShape,
    cache: &CpuKvCache,
    layer: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let group = shape.num_heads / shape.num_kv_heads;
    let qkv_width = shape.qkv_width();
    let q_size = shape.q_size();
    let (k_cache, v_cache) = (&cache.k[layer], &cache.v[layer]);
    let block_size = cache.block_size;
    let scale = 1.0 / (hd as f32).sqrt();

    // One task per (row, kv head): it owns the `group` contiguous output heads of that kv
    // head, so a decode step (one row) still spreads over the kv heads.
    let mut rows: Vec<(usize, usize)> = Vec::with_capacity(batch.num_tokens());
    for (s, seq) in batch.seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.query_len;
        rows.extend((0..seq.query_len).map(|i| (s, first_pos + i)));
    }
    let span = group * hd;
    out[..batch.num_tokens() * q_size]
        .par_chunks_mut(span)
        .enumerate()
        .for_each(|(task, out_group)| {
            let (row, kvh) = (task / shape.num_kv_heads, task % shape.num_kv_heads);
            let (s, pos) = rows[row];
            let table = &batch.seqs[s].block_table;
            let q_row = &qkv[row * qkv_width..row * qkv_width + q_size];
            let mut scores = vec![0.0f32; pos + 1];
            for (j, o) in out_group.chunks_exact_mut(hd).enumerate() {
                let h = kvh * group + j;
                let q = &q_row[h * hd..(h + 1) * hd];
                let mut max = f32::NEG_INFINITY;
                for (t, score) in scores.iter_mut().enumerate() {
                    let slot = table[t / block_size] as usize * block_size + t % block_size;
                    let k = &k_cache[(slot * shape.num_kv_heads + kvh) * hd..][..hd];
                    *score = dot(q, k) * scale;
                    max = max.max(*score);
                }
                let mut sum = 0.0f32;
                for score in scores.iter_mut() {
                    *score = (*score - max).exp();
                    sum += *score;
                }
                o.fill(0.0);
                for (t, &p) in scores.iter().enumerate() {
                    let slot = table[t / block_size] as usize * block_size + t % block_size;
                    let v = &v_cache[(slot * shape.num_kv_heads + kvh) * hd..][..hd];
                    let w = p / sum;
                    o.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
                }
            }
        });
}

/// Dot product with eight independent accumulators, so the compiler vectorizes it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqSlice;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Dense causal attention in f64 for one sequence: q `[rows, heads, hd]` at positions
    /// `first..first+rows`, k/v `[ctx, kv_heads, hd]`.
    fn reference(q: &[f32], k: &[f32], v: &[f32], first: usize, shape: AttentionShape) -> Vec<f64> {
        let (hd, nh, nkv) = (shape.head_dim, shape.num_heads, shape.num_kv_heads);
        let rows = q.len() / (nh * hd);
        let mut out = vec![0.0; rows * nh * hd];
        for r in 0..rows {
            for h in 0..nh {
                let kvh = h / (nh / nkv);
                let qh = &q[(r * nh + h) * hd..][..hd];
                let scores: Vec<f64> = (0..=first + r)
                    .map(|t| {
                        let kt = &k[(t * nkv + kvh) * hd..][..hd];
                        qh.iter()
                            .zip(kt)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (t, s) in scores.iter().enumerate() {
                    let w = (s - max).exp() / sum;
                    for d in 0..hd {
                        out[(r * nh + h) * hd + d] += w * v[(t * nkv + kvh) * hd + d] as f64;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn paged_attention_matches_dense_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        for (nh, nkv, hd, bs) in [(4, 4, 8, 4), (8, 2, 16, 16), (8, 1, 64, 16), (9, 3, 64, 16)] {
            let shape = AttentionShape {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
            };
            let kv = shape.kv_size();
            let width = shape.q_size() + 2 * kv;
            // Two sequences: one in prefill (a chunk after some cached tokens), one decoding.
            let specs = [(37usize, 13usize), (bs * 3, 1)];
            let num_blocks = 32;
            let mut cache = CpuKvCache {
                block_size: bs,
                num_blocks,
                k: vec![vec![f32::NAN; num_blocks * bs * kv]],
                v: vec![vec![f32::NAN; num_blocks * bs * kv]],
            };
            // Hand out blocks in a scrambled order so tables are not contiguous.
            let mut free: Vec<u32> = (0..num_blocks as u32).rev().collect();
            free.swap(3, 17);
            free.swap(5, 9);
            let mut batch = ForwardBatch::default();
            let mut qkv = Vec::new();
            let mut dense = Vec::new();
            for &(ctx, qlen) in &specs {
                let table: Vec<u32> = (0..ctx.div_ceil(bs)).map(|_| free.pop().unwrap()).collect();
                let k: Vec<f32> = (0..ctx * kv).map(|_| rng.random_range(-1.0..1.0)).collect();
                let v: Vec<f32> = (0..ctx * kv).map(|_| rng.random_range(-1.0..1.0)).collect();
                for t in 0..ctx {
                    let slot = table[t / bs] as usize * bs + t % bs;
                    cache.k[0][slot * kv..][..kv].copy_from_slice(&k[t * kv..][..kv]);
                    cache.v[0][slot * kv..][..kv].copy_from_slice(&v[t * kv..][..kv]);
                }
                let q: Vec<f32> = (0..qlen * shape.q_size())
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect();
                for r in 0..qlen {
                    qkv.extend_from_slice(&q[r * shape.q_size()..][..shape.q_size()]);
                    qkv.extend(std::iter::repeat_n(f32::NAN, 2 * kv)); // k, v parts unused here
                }
                batch.seqs.push(SeqSlice {
                    query_start: batch.token_ids.len(),
                    query_len: qlen,
                    context_len: ctx,
                    block_table: table,
                });
                batch.token_ids.extend(std::iter::repeat_n(0, qlen));
                dense.extend(reference(&q, &k, &v, ctx - qlen, shape));
            }
            assert_eq!(qkv.len(), batch.num_tokens() * width);
            let mut out = vec![f32::NAN; batch.num_tokens() * shape.q_size()];
            paged_attention(&qkv, &batch, shape, &cache, 0, &mut out);
            for (i, (&got, &want)) in out.iter().zip(&dense).enumerate() {
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "shape {shape:?} element {i}: {got} vs {want}"
                );
            }
        }
    }
}
