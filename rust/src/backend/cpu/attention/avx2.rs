//! The kernels with AVX2+FMA intrinsics: a 4×16 register tile for the scores, a vectorized
//! `exp` for the softmax, and 2 query vectors × 32 output columns in registers for `P·V`.

use std::arch::x86_64::*;

use super::{Kernels, KEY_BLOCK};
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

impl Kernels for Avx2Fma {
    fn scores(&self, q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]) {
        assert!(kt.len() >= hd * KEY_BLOCK && s.len() >= q.len() / hd * KEY_BLOCK);
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA; sizes checked above.
        unsafe { scores(q, kt, hd, s) }
    }

    fn softmax_step(
        &self,
        row: &mut [f32],
        n: usize,
        max: &mut f32,
        sum: &mut f32,
        acc: &mut [f32],
    ) {
        assert!(row.len() == KEY_BLOCK && n <= KEY_BLOCK && acc.len().is_multiple_of(8));
        // SAFETY: `self` exists, so the CPU has AVX2 and FMA; sizes checked above.
        unsafe { softmax_step(row, n, max, sum, acc) }
    }

    fn pv(&self, p: &[f32], v: &[f32], rows: &[usize], hd: usize, n: &[usize], acc: &mut [f32]) {
        let m = n.len();
        let most = n.iter().copied().max().unwrap_or(0);
        assert!(hd.is_multiple_of(8) && p.len() >= m * KEY_BLOCK && acc.len() >= m * hd);
        assert!(most <= KEY_BLOCK && most <= rows.len());
        assert!(rows[..most].iter().all(|&at| at + hd <= v.len()));
        // SAFETY: the CPU has AVX2 and FMA (`self` exists); every value row read is in `v`,
        // the other lengths are checked above.
        unsafe { pv(p, v, rows, hd, n, acc) }
    }

    fn transpose_keys(&self, k: &[f32], rows: &[usize], hd: usize, kt: &mut [f32]) {
        assert!(hd.is_multiple_of(8) && rows.len() <= KEY_BLOCK && kt.len() >= hd * KEY_BLOCK);
        assert!(rows.iter().all(|&at| at + hd <= k.len()));
        // SAFETY: as for `pv`: AVX2, and every key row read is in `k`.
        unsafe { transpose_keys(k, rows, hd, kt) }
    }
}

/// # Safety
///
/// AVX2 and FMA; `kt` holds `hd × KEY_BLOCK` floats and `s` `q.len() / hd × KEY_BLOCK`.
#[target_feature(enable = "avx2,fma")]
unsafe fn scores(q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]) {
    let m = q.len() / hd;
    let mut i = 0;
    while i + 4 <= m {
        for c in (0..KEY_BLOCK).step_by(16) {
            score_tile::<4>(q, kt, hd, i, c, s);
        }
        i += 4;
    }
    for i in i..m {
        for c in (0..KEY_BLOCK).step_by(16) {
            score_tile::<1>(q, kt, hd, i, c, s);
        }
    }
}

/// `s[i..i+R, c..c+16]`: 2R accumulators, one broadcast of a query element per row and two
/// loads of transposed keys per step of `d`, no horizontal sums.
///
/// # Safety
///
/// As [`scores`], with `i + R <= m` and `c + 16 <= KEY_BLOCK`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_tile<const R: usize>(
    q: &[f32],
    kt: &[f32],
    hd: usize,
    i: usize,
    c: usize,
    s: &mut [f32],
) {
    let (qp, kp) = (q.as_ptr().add(i * hd), kt.as_ptr().add(c));
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for d in 0..hd {
        let k0 = _mm256_loadu_ps(kp.add(d * KEY_BLOCK));
        let k1 = _mm256_loadu_ps(kp.add(d * KEY_BLOCK + 8));
        for (r, a) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*qp.add(r * hd + d));
            a[0] = _mm256_fmadd_ps(x, k0, a[0]);
            a[1] = _mm256_fmadd_ps(x, k1, a[1]);
        }
    }
    let sp = s.as_mut_ptr().add(i * KEY_BLOCK + c);
    for (r, a) in acc.iter().enumerate() {
        _mm256_storeu_ps(sp.add(r * KEY_BLOCK), a[0]);
        _mm256_storeu_ps(sp.add(r * KEY_BLOCK + 8), a[1]);
    }
}

/// See [`Kernels::softmax_step`].
///
/// # Safety
///
/// AVX2 and FMA; `row.len() == KEY_BLOCK`, `n <= KEY_BLOCK`, `acc.len()` a multiple of 8.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_step(row: &mut [f32], n: usize, max: &mut f32, sum: &mut f32, acc: &mut [f32]) {
    let full = n / 8 * 8;
    let mut mv = _mm256_set1_ps(*max);
    for c in (0..full).step_by(8) {
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(row[c..c + 8].as_ptr()));
    }
    let new_max = row[full..n].iter().fold(hmax(mv), |a, &b| a.max(b));
    if new_max > *max {
        // exp(-inf) = 0 on the first block: the running sum and output start from zero.
        let factor = (*max - new_max).exp();
        *sum *= factor;
        let f = _mm256_set1_ps(factor);
        for a in acc.chunks_exact_mut(8) {
            _mm256_storeu_ps(
                a.as_mut_ptr(),
                _mm256_mul_ps(f, _mm256_loadu_ps(a.as_ptr())),
            );
        }
        *max = new_max;
    }
    let (m, mut total) = (_mm256_set1_ps(new_max), _mm256_setzero_ps());
    let covered = n.div_ceil(8) * 8;
    for c in (0..covered).step_by(8) {
        let p = row[c..c + 8].as_mut_ptr();
        let mut e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), m));
        if c + 8 > n {
            // Lanes at and beyond `n` are keys this row must not see.
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - c) as i32), lane);
            e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
        }
        _mm256_storeu_ps(p, e);
        total = _mm256_add_ps(total, e);
    }
    row[covered..].fill(0.0);
    *sum += hsum(total);
}

/// `exp(x)` for `x <= 0`, Cephes' `expf`: `x = k·ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6
/// polynomial for `exp(r)`, `2^k` built in the exponent bits. Relative error within 2.5e-7
/// (checked against `f64::exp` in the tests); inputs below -87.3 (and -inf) give 0.
///
/// # Safety
///
/// AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(-87.3);
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
    let x = _mm256_max_ps(x, lo);
    let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 in two parts so that `k · ln2_hi` is exact.
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(k),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    _mm256_andnot_ps(underflow, e)
}

/// See [`Kernels::pv`].
///
/// # Safety
///
/// AVX2 and FMA; sizes as asserted by the caller.
#[target_feature(enable = "avx2,fma")]
unsafe fn pv(p: &[f32], v: &[f32], rows: &[usize], hd: usize, n: &[usize], acc: &mut [f32]) {
    let m = n.len();
    let mut i = 0;
    while i + 2 <= m {
        pv_rows::<2>(p, v, rows, hd, i, n[i].max(n[i + 1]), acc);
        i += 2;
    }
    if i < m {
        pv_rows::<1>(p, v, rows, hd, i, n[i], acc);
    }
}

/// Rows `i..i+R` of `acc` over keys `0..n`: 32 columns (4 registers per row) at a time,
/// then 8; each key's values are loaded once for the `R` rows.
///
/// # Safety
///
/// As [`pv`], with `i + R <= n.len()`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_rows<const R: usize>(
    p: &[f32],
    v: &[f32],
    rows: &[usize],
    hd: usize,
    i: usize,
    n: usize,
    acc: &mut [f32],
) {
    let mut d = 0;
    while d + 32 <= hd {
        pv_cols::<R, 4>(p, v, rows, hd, i, n, d, acc);
        d += 32;
    }
    while d < hd {
        pv_cols::<R, 1>(p, v, rows, hd, i, n, d, acc);
        d += 8;
    }
}

/// # Safety
///
/// As [`pv_rows`], with `d + 8W <= hd`.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_cols<const R: usize, const W: usize>(
    p: &[f32],
    v: &[f32],
    rows: &[usize],
    hd: usize,
    i: usize,
    n: usize,
    d: usize,
    acc: &mut [f32],
) {
    let ap = acc.as_mut_ptr().add(i * hd + d);
    let mut a = [[_mm256_setzero_ps(); W]; R];
    for (r, ar) in a.iter_mut().enumerate() {
        for (w, x) in ar.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(ap.add(r * hd + 8 * w));
        }
    }
    let (pp, vp) = (p.as_ptr().add(i * KEY_BLOCK), v.as_ptr().add(d));
    for t in 0..n {
        let mut vt = [_mm256_setzero_ps(); W];
        for (w, x) in vt.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(vp.add(*rows.get_unchecked(t) + 8 * w));
        }
        for (r, ar) in a.iter_mut().enumerate() {
            let w8 = _mm256_broadcast_ss(&*pp.add(r * KEY_BLOCK + t));
            for (x, vw) in ar.iter_mut().zip(&vt) {
                *x = _mm256_fmadd_ps(w8, *vw, *x);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (w, x) in ar.iter().enumerate() {
            _mm256_storeu_ps(ap.add(r * hd + 8 * w), *x);
        }
    }
}

/// The largest of the 8 lanes of `v`.
///
/// # Safety
///
/// AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hmax(v: __m256) -> f32 {
    let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps::<1>(h, h)))
}

/// The vectorized `exp` on 8 values, for the tests' error bound.
#[cfg(test)]
pub(super) fn exp8(x: [f32; 8]) -> Option<[f32; 8]> {
    Avx2Fma::detect()?;
    let mut out = [0.0f32; 8];
    // SAFETY: the CPU has AVX2 and FMA (checked above).
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp(_mm256_loadu_ps(x.as_ptr()))) };
    Some(out)
}

/// [`Kernels::transpose_keys`]: 8 keys × 8 dimensions at a time through registers (an 8 × 8
/// transpose), the keys past the last multiple of 8 one value at a time.
///
/// # Safety
///
/// The CPU has AVX2; `hd % 8 == 0`, every `rows[t] + hd ≤ k.len()`, `rows.len() ≤
/// KEY_BLOCK` and `kt.len() ≥ hd · KEY_BLOCK`.
#[target_feature(enable = "avx2")]
unsafe fn transpose_keys(k: &[f32], rows: &[usize], hd: usize, kt: &mut [f32]) {
    let (kp, tp) = (k.as_ptr(), kt.as_mut_ptr());
    let full = rows.len() / 8 * 8;
    for t0 in (0..full).step_by(8) {
        for d in (0..hd).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(kp.add(rows[t0 + j] + d)));
            for (dd, c) in transpose8(r).into_iter().enumerate() {
                _mm256_storeu_ps(tp.add((d + dd) * KEY_BLOCK + t0), c);
            }
        }
    }
    for (t, &at) in rows.iter().enumerate().skip(full) {
        for d in 0..hd {
            *tp.add(d * KEY_BLOCK + t) = *kp.add(at + d);
        }
    }
}

/// The 8 × 8 transpose of `r` (row `j` of the result is lane `j` of every input).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}
