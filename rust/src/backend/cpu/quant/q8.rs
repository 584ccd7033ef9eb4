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

/// Quantizes `x` (a whole number of blocks) into `out`, one block per 32 values: with AVX2
/// where the CPU has it (`q8_avx2.rs`, the same bits), else [`quantize_row_scalar`].
///
/// # Panics
///
/// When `x.len() != out.len() · 32`.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_row: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = super::q8_avx2::Q8Avx2::detect() {
        return k.quantize_row(x, out);
    }
    quantize_row_scalar(x, out);
}

/// [`quantize_row`] one value at a time: the reference the SIMD version is checked against.
pub fn quantize_row_scalar(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), out.len() * BLOCK, "quantize_row: length mismatch");
    for (o, x) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        *o = Q8Block::quantize(x.try_into().expect("chunks_exact gives whole blocks"));
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The blocks' bits (NaN scales compare equal to themselves).
    fn bits(b: &[Q8Block]) -> Vec<(u32, u32, [i8; BLOCK], [i8; BLOCK])> {
        b.iter()
            .map(|b| (b.d.to_bits(), b.s.to_bits(), b.qs, b.qs2))
            .collect()
    }

    /// One block of a kind that stresses a different step of the rounding.
    fn block(rng: &mut StdRng, kind: usize) -> Vec<f32> {
        let special = [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40];
        (0..BLOCK)
            .map(|i| match kind {
                // Half-integers under a maximum of 127: codes land on or next to ties.
                0 => rng.random_range(-254i32..=254) as f32 * 0.5,
                1 => rng.random_range(-1.0f32..1.0) * 10f32.powi(rng.random_range(-30..30)),
                2 => 0.0,
                3 if i % 5 == 0 => special[rng.random_range(0..special.len())],
                4 => rng.random_range(-1.7e38f32..1.7e38),
                5 => rng.random_range(-1e-38f32..1e-38),
                _ => rng.random_range(-1.0f32..1.0) * if i % 37 == 5 { 10.0 } else { 1.0 },
            })
            .collect()
    }

    #[test]
    fn avx2_quantize_row_is_bit_exact() {
        let Some(k) = crate::backend::cpu::quant::q8_avx2::Q8Avx2::detect() else {
            eprintln!("no AVX2: nothing to compare");
            return;
        };
        let mut rng = StdRng::seed_from_u64(18);
        for round in 0..2000 {
            let nb = 1 + round % 7;
            let mut x = Vec::new();
            for _ in 0..nb {
                let kind = rng.random_range(0..8);
                x.extend(block(&mut rng, kind));
            }
            let (mut a, mut b) = (vec![Q8Block::default(); nb], vec![Q8Block::default(); nb]);
            quantize_row_scalar(&x, &mut a);
            k.quantize_row(&x, &mut b);
            assert_eq!(bits(&a), bits(&b), "round {round}: {x:?}");
        }
    }
}
