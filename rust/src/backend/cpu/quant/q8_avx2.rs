//! [`Q8Block::quantize`] with AVX2, bit for bit: the same products, roundings and clamps in
//! the same order, 8 lanes at a time. On the default model the scalar version took ~9 % of
//! a decode step's serial time (`NOTES.md`), while the pool's helper waited.
//!
//! Where a lane op could differ from the scalar one, it is spelled out: `f32::round` (ties
//! away from zero) is `floor(|t|)`, plus one when the fraction is ≥ 0.5, with `t`'s sign put
//! back (all exact in f32); NaN codes become 0, as `NaN as i8` does; `max_ps` ignores a NaN in
//! its first operand, as `f32::max` does; the residual is a multiply, then a subtract (Rust
//! never contracts them into an FMA).

use std::arch::x86_64::*;

use super::q8::{Q8Block, RESIDUAL_STEPS};
use super::BLOCK;

/// Proof that this CPU has AVX2 (see [`super::avx2::Avx2`]).
#[derive(Clone, Copy, Debug)]
pub struct Q8Avx2(());

impl Q8Avx2 {
    /// `Some` when the CPU reports AVX2 (`std` caches the CPUID answer).
    pub fn detect() -> Option<Q8Avx2> {
        is_x86_feature_detected!("avx2").then_some(Q8Avx2(()))
    }

    /// Quantizes `x` into `out`, one block per 32 values (`x.len() == out.len() · 32`,
    /// checked by the caller).
    pub fn quantize_row(self, x: &[f32], out: &mut [Q8Block]) {
        for (o, x) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
            // SAFETY: `self` exists, so the CPU has AVX2; `x` holds 32 values.
            *o = unsafe { quantize_block(x.try_into().expect("whole blocks")) };
        }
    }
}

/// `1 / step`, or 0 for a zero step (all codes zero), as the scalar `codes`.
fn inverse(step: f32) -> f32 {
    if step != 0.0 {
        1.0 / step
    } else {
        0.0
    }
}

#[target_feature(enable = "avx2")]
unsafe fn quantize_block(x: &[f32; BLOCK]) -> Q8Block {
    let p = x.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let amax = abs_max(&v);
    let d = amax / (127.0 * RESIDUAL_STEPS as f32);
    let step = d * RESIDUAL_STEPS as f32;
    let (q, qs) = codes(&v, inverse(step));
    let step_v = _mm256_set1_ps(step);
    let mut r = v;
    for (r, &q) in r.iter_mut().zip(&q) {
        *r = _mm256_sub_ps(*r, _mm256_mul_ps(step_v, q));
    }
    let (q2, qs2) = codes(&r, inverse(d));
    // Σ (254·qs + qs2) in i32 lanes: exact, |Σ| ≤ 32 · 32,385.
    let k = _mm256_set1_epi32(RESIDUAL_STEPS);
    let mut sum = _mm256_setzero_si256();
    for i in 0..4 {
        let c = _mm256_add_epi32(
            _mm256_mullo_epi32(k, _mm256_cvtps_epi32(q[i])),
            _mm256_cvtps_epi32(q2[i]),
        );
        sum = _mm256_add_epi32(sum, c);
    }
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
    Q8Block {
        d,
        s: d * _mm_cvtsi128_si32(s) as f32,
        qs,
        qs2,
    }
}

/// `max |x|` over the block, starting from 0 and skipping NaN as the scalar fold does.
#[target_feature(enable = "avx2")]
unsafe fn abs_max(v: &[__m256; 4]) -> f32 {
    let mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    for &x in v {
        // A NaN first operand gives the second: NaN never enters `m`.
        m = _mm256_max_ps(_mm256_and_ps(x, mask), m);
    }
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_shuffle_ps::<1>(h, h));
    _mm_cvtss_f32(h)
}

/// The codes `clamp(round(x · inv), −127, 127)` of the block, as floats (NaN → 0, the value
/// the scalar `as i8` gives) and as bytes.
#[target_feature(enable = "avx2")]
unsafe fn codes(v: &[__m256; 4], inv: f32) -> ([__m256; 4], [i8; BLOCK]) {
    let inv = _mm256_set1_ps(inv);
    let sign = _mm256_set1_ps(-0.0);
    let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let mut q = *v;
    let mut i = [_mm256_setzero_si256(); 4];
    for (q, i) in q.iter_mut().zip(&mut i) {
        let t = _mm256_mul_ps(*q, inv);
        let a = _mm256_andnot_ps(sign, t);
        let f = _mm256_floor_ps(a);
        let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_sub_ps(a, f), half), one);
        let r = _mm256_or_ps(_mm256_add_ps(f, up), _mm256_and_ps(t, sign));
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
        *q = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        *i = _mm256_cvttps_epi32(*q);
    }
    // Packing interleaves 128-bit lanes: bytes come out as [0..4, 8..12, 16..20, 24..28,
    // 4..8, ...] in groups of 4, which the permutation puts back in order.
    let p01 = _mm256_packs_epi32(i[0], i[1]);
    let p23 = _mm256_packs_epi32(i[2], i[3]);
    let b = _mm256_packs_epi16(p01, p23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut out = [0i8; BLOCK];
    _mm256_storeu_si256(out.as_mut_ptr().cast(), b);
    (q, out)
}
