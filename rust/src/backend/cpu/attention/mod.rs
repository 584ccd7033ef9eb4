//! Causal attention over the paged KV cache on the CPU, flash-style.
//!
//! Each query row attends to the positions `0..=pos` of its own sequence, read through the
//! sequence's block table, so prefill, chunked prefill, prefix-cache hits and decode are the
//! same code. Work is split over (sequence, block of query rows, kv head) tasks: a task
//! transposes a block of [`KEY_BLOCK`] keys from the paged cache once, computes the
//! scores of all its query rows × the kv head's GQA group against them as one small matrix
//! product, reads the values where the cache holds them (no copy: the copy cost a decode
//! step ~2 % in `memmove`), and folds them into an output tile with an online softmax
//! (running max and sum per query vector), so the output is written once per task rather
//! than once per key.

use std::sync::Mutex;

use super::{spin_pool, CpuKvCache};
use crate::backend::{AttentionShape, ForwardBatch};

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;
#[cfg(test)]
mod tests;

/// Keys per block: a multiple of 16 (the AVX2 score tile's width).
const KEY_BLOCK: usize = 64;
/// Query rows per task: with a GQA group of 3 and head_dim 64 the tile of 48 query vectors
/// plus the key block stay within a core's L2.
const QUERY_BLOCK: usize = 16;

/// The three inner steps of a key block, implemented once portably and once with AVX2+FMA.
trait Kernels: Sync {
    /// `s[m, t] = q[m] · kt[.., t]` for every query vector `m` and all [`KEY_BLOCK`] columns
    /// of the transposed key block `kt` (`[hd, KEY_BLOCK]`); `s` is `[m, KEY_BLOCK]`.
    fn scores(&self, q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]);
    /// Online softmax step of one query vector over the first `n` scores of `row`: updates
    /// the running `max` and `sum`, rescales `acc` (its output so far), and leaves the
    /// weights `exp(s - max)` in `row[..n]` and zeros in `row[n..]`.
    fn softmax_step(
        &self,
        row: &mut [f32],
        n: usize,
        max: &mut f32,
        sum: &mut f32,
        acc: &mut [f32],
    );
    /// `acc[m] += Σ_t p[m, t] · v[rows[t]..rows[t] + hd]` over `t < n[m]` (`p` is
    /// `[m, KEY_BLOCK]`, `acc` is `[m, hd]`): the values are read where the paged cache holds
    /// them; weights at and beyond `n[m]` are zero.
    fn pv(&self, p: &[f32], v: &[f32], rows: &[usize], hd: usize, n: &[usize], acc: &mut [f32]);
    /// `kt[d * KEY_BLOCK + t] = k[rows[t] + d]` for `t < rows.len()`: the block's keys,
    /// transposed.
    fn transpose_keys(&self, k: &[f32], rows: &[usize], hd: usize, kt: &mut [f32]) {
        for (t, &at) in rows.iter().enumerate() {
            for (d, &x) in k[at..at + hd].iter().enumerate() {
                kt[d * KEY_BLOCK + t] = x;
            }
        }
    }
}

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
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = avx2::Avx2Fma::detect().filter(|_| shape.head_dim.is_multiple_of(8)) {
        return attention_with(&k, qkv, batch, shape, cache, layer, out);
    }
    attention_with(&portable::Portable, qkv, batch, shape, cache, layer, out)
}

/// One task: `rows` query rows of sequence `seq` starting at batch row `row0` (position
/// `pos0`), kv head `kvh`.
#[derive(Clone, Copy)]
struct Task {
    seq: usize,
    row0: usize,
    pos0: usize,
    rows: usize,
    kvh: usize,
}

/// Everything a task reads.
struct Inputs<'a> {
    qkv: &'a [f32],
    batch: &'a ForwardBatch,
    shape: AttentionShape,
    k_cache: &'a [f32],
    v_cache: &'a [f32],
    block_size: usize,
}

fn attention_with<K: Kernels>(
    kernels: &K,
    qkv: &[f32],
    batch: &ForwardBatch,
    shape: AttentionShape,
    cache: &CpuKvCache,
    layer: usize,
    out: &mut [f32],
) {
    let mut tasks = Vec::new();
    let mut row0 = 0;
    for (seq, s) in batch.seqs.iter().enumerate() {
        let first_pos = s.context_len - s.query_len;
        for i in (0..s.query_len).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(s.query_len - i);
            tasks.extend((0..shape.num_kv_heads).map(|kvh| Task {
                seq,
                row0: row0 + i,
                pos0: first_pos + i,
                rows,
                kvh,
            }));
        }
        row0 += s.query_len;
    }
    let inputs = Inputs {
        qkv,
        batch,
        shape,
        k_cache: &cache.k[layer],
        v_cache: &cache.v[layer],
        block_size: cache.block_size,
    };
    // Tasks own disjoint, non-contiguous parts of `out` (a row block × a head group), so
    // each returns its tile and the copy into `out` (linear in the rows) happens after.
    let tiles: Vec<Mutex<Vec<f32>>> = tasks.iter().map(|_| Mutex::default()).collect();
    spin_pool::run(tasks.len(), |i| {
        *tiles[i].lock().expect("a task panicked") = attend_block(kernels, &inputs, &tasks[i]);
    });
    let tiles = tiles
        .into_iter()
        .map(|t| t.into_inner().expect("a task panicked"));
    let span = shape.num_heads / shape.num_kv_heads * shape.head_dim;
    let q_size = shape.q_size();
    for (t, tile) in tasks.iter().zip(tiles) {
        for (r, src) in tile.chunks_exact(span).enumerate() {
            out[(t.row0 + r) * q_size + t.kvh * span..][..span].copy_from_slice(src);
        }
    }
}

/// The output tile `[rows, group * hd]` of one task.
fn attend_block<K: Kernels>(kernels: &K, inp: &Inputs<'_>, t: &Task) -> Vec<f32> {
    let shape = inp.shape;
    let hd = shape.head_dim;
    let nkv = shape.num_kv_heads;
    let group = shape.num_heads / nkv;
    let (qkv_width, q_size) = (shape.qkv_width(), shape.q_size());
    let m = t.rows * group;
    // The query vectors, row-major (`r * group + j`), pre-scaled by 1/sqrt(hd).
    let scale = 1.0 / (hd as f32).sqrt();
    let mut q = Vec::with_capacity(m * hd);
    for r in 0..t.rows {
        let row = &inp.qkv[(t.row0 + r) * qkv_width..][..q_size];
        let heads = &row[t.kvh * group * hd..][..group * hd];
        q.extend(heads.iter().map(|x| x * scale));
    }
    let table = &inp.batch.seqs[t.seq].block_table;
    let mut kt = vec![0.0f32; hd * KEY_BLOCK];
    let mut rows = [0usize; KEY_BLOCK];
    let mut s = vec![0.0f32; m * KEY_BLOCK];
    let mut acc = vec![0.0f32; m * hd];
    let (mut max, mut sum) = (vec![f32::NEG_INFINITY; m], vec![0.0f32; m]);
    let mut n = vec![0usize; m];
    let last_pos = t.pos0 + t.rows - 1;
    for t0 in (0..=last_pos).step_by(KEY_BLOCK) {
        let kb = KEY_BLOCK.min(last_pos + 1 - t0);
        // Where each key's (and value's) head sits in the paged cache.
        for (i, at) in rows[..kb].iter_mut().enumerate() {
            let pos = t0 + i;
            let slot = table[pos / inp.block_size] as usize * inp.block_size + pos % inp.block_size;
            *at = (slot * nkv + t.kvh) * hd;
        }
        kernels.transpose_keys(inp.k_cache, &rows[..kb], hd, &mut kt);
        // Columns beyond `kb` keep the previous block's keys: their scores are computed
        // but never used (`n` stops before them).
        kernels.scores(&q, &kt, hd, &mut s);
        for (i, nv) in n.iter_mut().enumerate() {
            // Causal: the row at `pos0 + r` sees keys up to its own position.
            let pos = t.pos0 + i / group;
            *nv = (pos + 1).saturating_sub(t0).min(kb);
            let row = &mut s[i * KEY_BLOCK..(i + 1) * KEY_BLOCK];
            let a = &mut acc[i * hd..(i + 1) * hd];
            kernels.softmax_step(row, *nv, &mut max[i], &mut sum[i], a);
        }
        kernels.pv(&s, inp.v_cache, &rows[..kb], hd, &n, &mut acc);
    }
    for (a, l) in acc.chunks_exact_mut(hd).zip(&sum) {
        let inv = 1.0 / l;
        a.iter_mut().for_each(|x| *x *= inv);
    }
    acc
}
