//! Activations quantized per 32-element block for the integer dot products, as llama.cpp's
//! `quantize_row_q8_1` does, with a second 8-bit level for what the first one rounds away.
//!
//! One 8-bit level (llama.cpp's scheme) moves the default model's log-probabilities by up to
//! 0.3 nats against the f32 path and flips 8 of the 12 golden greedy continuations by more
//! than the 0.05 nats issue 18 allows (NOTES.md). The residual level costs one more integer
//! dot product per block against the same unpacked weights, and brings the rounding error
//! of each value from `d/2` down to `d₂/2 ≤ d/508`.

use super::BLOCK;

/// 32 activations as `x[i] ≈ d · qs[i] + d2 · qs2[i]`: `d = max|x| / 127`, `qs[i] =
/// round(x[i] / d)`, then the same for the residual `r[i] = x[i] − d · qs[i]` (codes in
/// `-127..=127`); `s = d · Σ qs + d2 · Σ qs2`, the block's sum as represented (the formats
/// with a per-block minimum need it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    /// The first level's scale.
    pub d: f32,
    /// The residual level's scale.
    pub d2: f32,
    /// `d · Σ qs + d2 · Σ qs2`.
    pub s: f32,
    /// The first level's codes.
    pub qs: [i8; BLOCK],
    /// The residual level's codes.
    pub qs2: [i8; BLOCK],
}

/// `(d, codes)` with `d = max|x| / 127` and `codes[i] = round(x[i] / d)` (ties away from
/// zero, as `roundf`; all-zero input gives `d = 0` and zero codes).
fn level(x: &[f32; BLOCK]) -> (f32, [i8; BLOCK]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v · id| ≤ 127 up to rounding; the clamp keeps −128 out, which the AVX2 kernels'
        // sign trick cannot negate.
        *q = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    (d, qs)
}

impl Q8Block {
    /// Quantizes 32 values in two levels.
    pub fn quantize(x: &[f32; BLOCK]) -> Q8Block {
        let (d, qs) = level(x);
        let mut r = [0.0f32; BLOCK];
        for ((r, &x), &q) in r.iter_mut().zip(x).zip(&qs) {
            *r = x - d * f32::from(q);
        }
        let (d2, qs2) = level(&r);
        let sum = |qs: &[i8; BLOCK]| qs.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
        Q8Block {
            d,
            d2,
            s: d * sum(&qs) + d2 * sum(&qs2),
            qs,
            qs2,
        }
    }
}

/// Quantizes `x` (a whole number of blocks) into `out`, one block per 32 values.
///
/// # Panics
///
/// When `x.len() != out.len() · 32`.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_row: length mismatch");
    for (o, x) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        *o = Q8Block::quantize(x.try_into().expect("chunks_exact gives whole blocks"));
    }
}
