//! The AVX2 dot products of weight blocks with [`Q8Block`] activations (llama.cpp's
//! `ggml_vec_dot_q4_0_q8_0` family): one weight row against `R` activation rows at once, so
//! that each weight block is loaded and unpacked once for `R` rows.
//!
//! Per block: the 32 weight codes are widened to 32 bytes; for each of the activation's two
//! levels, `_mm256_maddubs_epi16` multiplies unsigned by signed bytes and adds pairs to i16
//! (exact: |pair| ≤ 2·128·127 < 2¹⁵); `_mm256_madd_epi16` adds pairs of those to 8 i32 lanes,
//! weighted 254 for the first level and 1 for the residual, so the two levels meet in
//! integers; the lanes are converted to f32 (exact, < 2²⁴) and accumulated with `d_w·d_a`
//! by FMA. Signed codes (Q4_0, Q8_0) go through the sign trick:
//! `maddubs(|w|, sign(a, w))`. The minimum of Q4_1 adds `m_w·s_a` per block in a scalar.
//! Same value as [`super::QuantFormat::dot_scalar`] up to the order of f32 additions.
//!
//! Where the CPU has AVX-512 VNNI (with AVX-512VL, for its 256-bit form), each level's
//! `maddubs` + `madd` pair is one `vpdpbusd` (`_mm256_dpbusd_epi32`: four u8·i8 products
//! summed into each i32 lane), and the levels meet as `254·l₁ + l₂`: the same i32 lanes as the
//! `maddubs` path (no i16 step saturates there: |pair| ≤ 2·128·127), so the same results bit
//! for bit. Chosen at run time ([`Avx2::detect`]); `INFIRE_CPU_VNNI=0` keeps `maddubs`.

use std::arch::x86_64::*;

use super::q8::{Q8Block, RESIDUAL_STEPS};
use super::QuantFormat;
use crate::backend::cpu::simd::hsum;

/// Proof that this CPU has AVX2, FMA and F16C (and, with `vnni`, AVX-512 VNNI and VL): the only
/// way to get one is [`Avx2::detect`], which is what makes calling the `target_feature`
/// functions below sound.
#[derive(Clone, Copy, Debug)]
pub struct Avx2 {
    vnni: bool,
}

impl Avx2 {
    /// `Some` when the CPU reports AVX2, FMA and F16C (`std` caches the CPUID answer), with the
    /// VNNI kernel where the CPU has it and `INFIRE_CPU_VNNI` is not `0`.
    pub fn detect() -> Option<Avx2> {
        // Read once: detection runs on every product call.
        static VNNI_ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let allowed = *VNNI_ALLOWED
            .get_or_init(|| std::env::var("INFIRE_CPU_VNNI").map_or(true, |v| v != "0"));
        Self::detect_with(allowed)
    }

    /// [`Avx2::detect`], with the VNNI kernel only when `vnni` allows it (tests compare both).
    pub fn detect_with(vnni: bool) -> Option<Avx2> {
        let ok = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let vnni =
            vnni && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl");
        ok.then_some(Avx2 { vnni })
    }

    /// Whether the dot products run on `vpdpbusd`.
    #[cfg(test)]
    pub fn vnni(self) -> bool {
        self.vnni
    }

    /// Whether `fmt` has this kernel (the 32-element formats that need no fifth bit: the
    /// others run the tile, `tile.rs`).
    pub fn has_kernel(fmt: QuantFormat) -> bool {
        matches!(
            fmt,
            QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0
        )
    }

    /// `out[r] = w · acts[r]` for the `R` activation rows `acts[r·nb..(r+1)·nb]`, where
    /// `nb = w.len() / fmt.block_bytes()` blocks.
    ///
    /// # Panics
    ///
    /// When `fmt` has no kernel here ([`Avx2::has_kernel`]), `w` is not a whole number of blocks or
    /// `acts` holds fewer than `R·nb` blocks.
    pub fn dot_rows<const R: usize>(
        self,
        fmt: QuantFormat,
        w: &[u8],
        acts: &[Q8Block],
    ) -> [f32; R] {
        let nb = w.len() / fmt.block_bytes();
        assert!(nb * fmt.block_bytes() == w.len() && acts.len() >= R * nb);
        // SAFETY: `self` exists, so the CPU has AVX2, FMA and F16C, and AVX-512 VNNI and VL
        // when `self.vnni`; the lengths are checked.
        unsafe {
            match (fmt, self.vnni) {
                (QuantFormat::Q4_0, false) => dot_rows::<Q4_0, R>(w, acts, nb),
                (QuantFormat::Q4_1, false) => dot_rows::<Q4_1, R>(w, acts, nb),
                (QuantFormat::Q8_0, false) => dot_rows::<Q8_0, R>(w, acts, nb),
                (QuantFormat::Q4_0, true) => dot_rows_vnni::<Q4_0, R>(w, acts, nb),
                (QuantFormat::Q4_1, true) => dot_rows_vnni::<Q4_1, R>(w, acts, nb),
                (QuantFormat::Q8_0, true) => dot_rows_vnni::<Q8_0, R>(w, acts, nb),
                (other, _) => panic!("{other:?} has no maddubs kernel (Avx2::has_kernel)"),
            }
        }
    }
}

/// How one format's block is unpacked into 32 bytes of codes.
trait Block {
    /// Bytes per block.
    const BYTES: usize;
    /// Whether the codes are signed (else 0..16, with a minimum at byte 2).
    const SIGNED: bool;
    /// The 32 codes of the block at `b`, element `i` in byte `i`.
    ///
    /// # Safety
    ///
    /// `b` is valid for [`Self::BYTES`] reads; the CPU has AVX2.
    unsafe fn codes(b: *const u8) -> __m256i;
}

/// Q4_0 marker.
struct Q4_0;
/// Q4_1 marker.
struct Q4_1;
/// Q8_0 marker.
struct Q8_0;

/// The 16 bytes at `qs` as 32 nibbles: low nibbles in bytes 0..16, high nibbles in 16..32.
///
/// # Safety
///
/// `qs` is valid for 16 reads; the CPU has AVX2.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(qs.cast());
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
    _mm256_set_m128i(hi, lo)
}

impl Block for Q4_0 {
    const BYTES: usize = 18;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> __m256i {
        _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8))
    }
}

impl Block for Q4_1 {
    const BYTES: usize = 20;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> __m256i {
        nibbles(b.add(4))
    }
}

impl Block for Q8_0 {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> __m256i {
        _mm256_loadu_si256(b.add(2).cast())
    }
}

/// The f16 at `p`, as f32.
///
/// # Safety
///
/// `p` is valid for 2 reads; the CPU has F16C.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = i32::from(p.cast::<u16>().read_unaligned());
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// See [`Avx2::dot_rows`].
///
/// # Safety
///
/// The CPU has AVX2, FMA and F16C; `w` holds `nb` blocks of `B`, `acts` at least `R·nb`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows<B: Block, const R: usize>(w: &[u8], acts: &[Q8Block], nb: usize) -> [f32; R] {
    dot_rows_body::<B, R, false>(w, acts, nb)
}

/// [`dot_rows`] on `vpdpbusd`.
///
/// # Safety
///
/// As [`dot_rows`], and the CPU has AVX-512 VNNI and VL.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn dot_rows_vnni<B: Block, const R: usize>(
    w: &[u8],
    acts: &[Q8Block],
    nb: usize,
) -> [f32; R] {
    dot_rows_body::<B, R, true>(w, acts, nb)
}

/// The loop of [`dot_rows`] (`VNNI`: of [`dot_rows_vnni`]), inlined into each so that it is
/// compiled with their target features.
///
/// # Safety
///
/// As the caller's.
#[inline(always)]
unsafe fn dot_rows_body<B: Block, const R: usize, const VNNI: bool>(
    w: &[u8],
    acts: &[Q8Block],
    nb: usize,
) -> [f32; R] {
    let ones = _mm256_set1_epi16(1);
    let steps = _mm256_set1_epi16(RESIDUAL_STEPS as i16);
    let steps32 = _mm256_set1_epi32(RESIDUAL_STEPS);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0.0f32; R];
    for b in 0..nb {
        let wp = w.as_ptr().add(b * B::BYTES);
        let codes = B::codes(wp);
        let dw = f16_at(wp);
        // Unsigned left operand of maddubs, and the sign to move onto the activations.
        let abs = if B::SIGNED {
            _mm256_sign_epi8(codes, codes)
        } else {
            codes
        };
        // One level's activation codes, with the weights' signs moved onto them.
        let signed = |qs: &[i8; 32]| {
            let q = _mm256_loadu_si256(qs.as_ptr().cast());
            if B::SIGNED {
                _mm256_sign_epi8(q, codes)
            } else {
                q
            }
        };
        for r in 0..R {
            let a = acts.get_unchecked(r * nb + b);
            // 8 i32 lanes of Σ codes·(254·qs + qs2): |lane| ≤ 4·128·(254 + 1)·127 < 2²⁴.
            let lanes = if VNNI {
                let zero = _mm256_setzero_si256();
                let l1 = _mm256_dpbusd_epi32(zero, abs, signed(&a.qs));
                let l2 = _mm256_dpbusd_epi32(zero, abs, signed(&a.qs2));
                _mm256_add_epi32(_mm256_mullo_epi32(l1, steps32), l2)
            } else {
                _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_maddubs_epi16(abs, signed(&a.qs)), steps),
                    _mm256_madd_epi16(_mm256_maddubs_epi16(abs, signed(&a.qs2)), ones),
                )
            };
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), _mm256_cvtepi32_ps(lanes), acc[r]);
            if !B::SIGNED {
                mins[r] += f16_at(wp.add(2)) * a.s;
            }
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]) + mins[r];
    }
    out
}
