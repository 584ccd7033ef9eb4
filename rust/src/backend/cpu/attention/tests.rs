//! The blocked attention against a dense f64 reference, with both kernel sets.

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
                    let dot: f64 = qh.iter().zip(kt).map(|(a, b)| *a as f64 * *b as f64).sum();
                    dot / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let o = &mut out[(r * nh + h) * hd..][..hd];
            for (t, s) in scores.iter().enumerate() {
                let w = (s - max).exp() / sum;
                let vt = &v[(t * nkv + kvh) * hd..][..hd];
                o.iter_mut().zip(vt).for_each(|(o, v)| *o += w * *v as f64);
            }
        }
    }
    out
}

/// A batch of sequences `(context_len, query_len)` in a paged cache with scrambled block
/// tables, random q/k/v, and the reference output.
struct Case {
    shape: AttentionShape,
    cache: CpuKvCache,
    batch: ForwardBatch,
    qkv: Vec<f32>,
    want: Vec<f64>,
}

fn case(rng: &mut StdRng, shape: AttentionShape, bs: usize, specs: &[(usize, usize)]) -> Case {
    let kv = shape.kv_size();
    let num_blocks: usize = specs.iter().map(|s| s.0.div_ceil(bs)).sum::<usize>() + 3;
    let mut cache = CpuKvCache {
        block_size: bs,
        num_blocks,
        k: vec![vec![f32::NAN; num_blocks * bs * kv]],
        v: vec![vec![f32::NAN; num_blocks * bs * kv]],
    };
    // Hand out blocks in a scrambled order so tables are not contiguous.
    let mut free: Vec<u32> = (0..num_blocks as u32).rev().collect();
    free.swap(0, num_blocks - 2);
    free.swap(1, num_blocks / 2);
    let (mut batch, mut qkv, mut want) = (ForwardBatch::default(), Vec::new(), Vec::new());
    for &(ctx, qlen) in specs {
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
        want.extend(reference(&q, &k, &v, ctx - qlen, shape));
    }
    Case {
        shape,
        cache,
        batch,
        qkv,
        want,
    }
}

/// Runs `kernels` on `c` and checks every element within `tol · (1 + |want|)`.
fn check<K: Kernels>(kernels: &K, c: &Case, tol: f64) {
    let mut out = vec![f32::NAN; c.batch.num_tokens() * c.shape.q_size()];
    attention_with(kernels, &c.qkv, &c.batch, c.shape, &c.cache, 0, &mut out);
    for (i, (&got, &want)) in out.iter().zip(&c.want).enumerate() {
        assert!(
            (got as f64 - want).abs() <= tol * (1.0 + want.abs()),
            "shape {:?} element {i}: {got} vs {want}",
            c.shape
        );
    }
}

/// f32 with exact `exp` (portable) and with the polynomial `exp` (AVX2, relative error
/// 2.5e-7 per weight) both stay within 1e-5 of the f64 reference, relative to `1 + |want|`.
const TOL: f64 = 1e-5;

fn check_both(c: &Case) {
    check(&portable::Portable, c, TOL);
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = avx2::Avx2Fma::detect().filter(|_| c.shape.head_dim.is_multiple_of(8)) {
        check(&k, c, TOL);
    }
    // And through the public entry point, whichever kernels it picks.
    let mut out = vec![f32::NAN; c.batch.num_tokens() * c.shape.q_size()];
    paged_attention(&c.qkv, &c.batch, c.shape, &c.cache, 0, &mut out);
    for (&got, &want) in out.iter().zip(&c.want) {
        assert!((got as f64 - want).abs() <= TOL * (1.0 + want.abs()));
    }
}

fn shape(num_heads: usize, num_kv_heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    }
}

#[test]
fn mixed_batches_match_dense_reference() {
    let mut rng = StdRng::seed_from_u64(7);
    // GQA groups 1, 3, 4, 7; head sizes 8, 12 (portable only), 64, 128; block sizes 4, 16.
    for (s, bs) in [
        (shape(4, 4, 8), 4),
        (shape(6, 2, 12), 16),
        (shape(4, 4, 64), 16),
        (shape(9, 3, 64), 16),
        (shape(8, 2, 128), 16),
        (shape(7, 1, 64), 16),
        (shape(14, 2, 128), 16),
    ] {
        // A chunk after cached tokens, a decode row, a whole odd-length prompt, and a chunk
        // that starts exactly at a key block's edge.
        let specs = [(37, 13), (bs * 3, 1), (131, 131), (64 + 20, 20)];
        check_both(&case(&mut rng, s, bs, &specs));
    }
}

#[test]
fn long_contexts_match_dense_reference() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in [shape(4, 1, 64), shape(7, 1, 128), shape(4, 4, 64)] {
        // Over 4,096 keys: a 37-row chunk after a cached prefix, and a decode row.
        check_both(&case(&mut rng, s, 16, &[(4133, 37), (4097, 1)]));
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn vectorized_exp_relative_error() {
    let mut worst = 0.0f64;
    for i in 0..87_000 {
        let x0 = -(i as f32) * 1e-3;
        let x: [f32; 8] = std::array::from_fn(|l| x0 - l as f32 * 1.37e-4);
        let Some(y) = avx2::exp8(x) else { return };
        for (x, y) in x.iter().zip(y) {
            let want = (*x as f64).exp();
            worst = worst.max((y as f64 - want).abs() / want);
        }
    }
    assert!(worst < 2.5e-7, "worst relative error {worst}");
    let y = avx2::exp8([
        f32::NEG_INFINITY,
        -88.0,
        -1e9,
        0.0,
        -0.0,
        -87.0,
        -1.0,
        -50.0,
    ])
    .unwrap();
    assert_eq!(&y[..5], &[0.0, 0.0, 0.0, 1.0, 1.0]);
}

/// The AVX2 key transpose is the scalar one, and its value product reads rows in place to the
/// same bits as from a gathered copy, for blocks of every length (tails past 8 included).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_reads_the_paged_cache_as_the_gathered_copy() {
    let Some(k) = avx2::Avx2Fma::detect() else {
        eprintln!("no AVX2+FMA: nothing to compare");
        return;
    };
    let mut rng = StdRng::seed_from_u64(18);
    let (hd, slots) = (64, 300);
    let cache: Vec<f32> = (0..slots * hd)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for kb in [1usize, 7, 8, 9, 31, 64] {
        let rows: Vec<usize> = (0..kb).map(|_| rng.random_range(0..slots) * hd).collect();
        let (mut a, mut b) = (vec![0.5f32; hd * KEY_BLOCK], vec![0.5f32; hd * KEY_BLOCK]);
        portable::Portable.transpose_keys(&cache, &rows, hd, &mut a);
        k.transpose_keys(&cache, &rows, hd, &mut b);
        assert_eq!(a, b, "{kb} keys");

        let m = 5;
        let p: Vec<f32> = (0..m * KEY_BLOCK).map(|_| rng.random()).collect();
        let n: Vec<usize> = (0..m).map(|i| kb.saturating_sub(i % 3)).collect();
        let gathered: Vec<f32> = rows
            .iter()
            .flat_map(|&at| cache[at..at + hd].to_vec())
            .collect();
        let dense: Vec<usize> = (0..kb).map(|t| t * hd).collect();
        let acc0: Vec<f32> = (0..m * hd).map(|_| rng.random()).collect();
        let (mut a, mut b) = (acc0.clone(), acc0);
        k.pv(&p, &gathered, &dense, hd, &n, &mut a);
        k.pv(&p, &cache, &rows, hd, &n, &mut b);
        assert_eq!(a, b, "{kb} keys");
    }
}
