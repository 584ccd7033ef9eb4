//! Activations quantized per 32-element block for the integer dot products, as llama.cpp's
//! `quantize_row_q8_1` does, with a second 8-bit level for what the first one rounds away.
//!
//! One 8-bit level (llama.cpp's scheme) moves the default model's log-probabilities by up to
//! 0.3 nats against the f32 path and flips 8 of the 12 golden greedy continuations by more
//! than the 0.05 nats issue 18 allows (NOTES.md). The residual level costs one more integer
//! dot product per block against the same unpacked weights (combined with the first in
//! integers, so one conversion and one FMA per block still), and brings the rounding error of
//! each value from `max|x|/254` down to `max|x|/64,516`.

use super::BLOCK;

/// Steps of the residual level per step of the first: a block's codes form one integer code
/// `RESIDUAL_STEPS · qs + qs2` (|·| ≤ 32,385) with the scale `d`.
pub const RESIDUAL_STEPS: i32 = 254;

/// 32 activations as `x[i] ≈ d · (254 · qs[i] + qs2[i])`: the first level rounds `x` to
/// steps of `254 · d = max|x| / 127` (`qs`), the residual level rounds what is left to steps
/// of `d` (`qs2`, |residual| ≤ 127·d); codes in `-127..=127`. `s` is the block's sum as
/// represented, `d · Σ (254 · qs + qs2)` (the formats with a per-block minimum need it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    /// The scale of the combined code (the residual level's step).
    pub d: f32,
    /// `d · Σ (254 · qs + qs2)`.
    pub s: f32,
    /// The first level's codes.
    pub qs: [i8; BLOCK],
    /// The residual level's codes.
    pub qs2: [i8; BLOCK],
}

/// `x` rounded to the nearest multiple of `step` (ties away from zero, as `roundf`), in
/// `-127..=127` steps (the clamp keeps −128 out, which the AVX2 kernels' sign trick cannot
/// negate, and catches the last-bit overshoot of `x / step`). `step = 0` gives zero codes.
fn codes(x: &[f32; BLOCK], step: f32) -> [i8; BLOCK] {
    let inv = if step != 0.0 { 1.0 / step } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    qs
}

impl Q8Block {
    /// Quantizes 32 values in two levels.
    pub fn quantize(x: &[f32; BLOCK]) -> Q8Block {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / (127.0 * RESIDUAL_STEPS as f32);
        let step = d * RESIDUAL_STEPS as f32;
        let qs = codes(x, step);
        let mut r = [0.0f32; BLOCK];
        for ((r, &x), &q) in r.iter_mut().zip(x).zip(&qs) {
            *r = x - step * f32::from(q);
        }
        let qs2 = codes(&r, d);
        let sum: i32 = qs
            .iter()
            .zip(&qs2)
            .map(|(&q, &q2)| RESIDUAL_STEPS * i32::from(q) + i32::from(q2))
            .sum();
        Q8Block {
            d,
            s: d * sum as f32,
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
