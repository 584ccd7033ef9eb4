//! The AVX2+FMA tile, with `std::arch` intrinsics.

use std::arch::x86_64::*;

use super::tiled::{block, Shape, Tile};
use super::LANES;
use crate::backend::cpu::simd::hsum;

/// Proof that this CPU has AVX2 and FMA: the only way to get one is [`Avx2Fma::detect`],
/// which is what makes calling the `target_feature` functions below sound.
pub(super) struct Avx2Fma(());

impl Avx2Fma {
    /// `Some` when the CPU reports AVX2 and FMA (`std` caches the CPUID answer).
    pub(super) fn detect() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        ok.then_some(Avx2Fma(()))
    }
}

impl Tile for Avx2Fma {
    #[inline(always)]
    fn tile<const R: usize, const C: usize>(
        &self,
        w: &[f32],
        x: &[f32],
        k: usize,
        next: &[f32],
    ) -> [[f32; C]; R] {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA.
        unsafe { tile::<R, C>(w, x, k, next) }
    }

    fn block(&self, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA.
        unsafe { block_avx2_fma(self, s, j0, out) }
    }
}

/// [`block`] compiled with AVX2 and FMA, so that the tiles inline into it.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2_fma(t: &Avx2Fma, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
    block(t, s, j0, out);
}

/// See [`Tile::tile`]. Loads go through bounds-checked slices (rows are cut to the
/// vectorized length first, so the checks fold away); the tail of `k` beyond a multiple of
/// 8 is done in scalar FMAs.
///
/// # Safety
///
/// The CPU must have AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const C: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    next: &[f32],
) -> [[f32; C]; R] {
    let vectors = k / LANES;
    let body = vectors * LANES;
    let mut w_body: [&[f32]; R] = [&[]; R];
    for (r, row) in w_body.iter_mut().enumerate() {
        *row = &w[r * k..r * k + body];
    }
    let mut x_body: [&[f32]; C] = [&[]; C];
    for (c, row) in x_body.iter_mut().enumerate() {
        *row = &x[c * k..c * k + body];
    }
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    // Spread the prefetch of `next` over the loop: R·k floats in k/8 steps, so R/2 cache
    // lines of 16 floats per step cover it in one pass.
    let lines_per_step = R.div_ceil(2);
    for q in 0..vectors {
        let p = q * LANES;
        for l in 0..lines_per_step {
            let at = (q * lines_per_step + l) * 16;
            if at < next.len() {
                _mm_prefetch::<_MM_HINT_T0>(next[at..].as_ptr().cast());
            }
        }
        let mut xv = [_mm256_setzero_ps(); C];
        for c in 0..C {
            xv[c] = _mm256_loadu_ps(x_body[c][p..p + LANES].as_ptr());
        }
        for r in 0..R {
            let wv = _mm256_loadu_ps(w_body[r][p..p + LANES].as_ptr());
            for c in 0..C {
                acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
            }
        }
    }
    let mut result = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut s = hsum(acc[r][c]);
            for p in body..k {
                s = w[r * k + p].mul_add(x[c * k + p], s);
            }
            result[r][c] = s;
        }
    }
    result
}
