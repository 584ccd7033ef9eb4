//! The k-quants as the AVX2 tile reads them (see `unpack.rs`): a 256-element super-block is 8
//! sub-blocks of 32, each lined up with one activation block; the layouts are those of
//! `kquant.rs` (the scalar reference), the bit manipulation that of llama.cpp's
//! `ggml_vec_dot_q4_K_q8_K` / `q5_K` / `q6_K` AVX2 code.
//!
//! `Q4_K`/`Q5_K` keep the sub-block's 6-bit scale out of the codes (`0..32`, so the tile's i32
//! lanes stay exact in f32) and put it in the f32 scale `d · scale_s`, with `−dmin · min_s` as
//! the minimum. `Q6_K` has two 8-bit scales per sub-block (one per 16 values): its codes are
//! `q − 32` and its halves' f32 scales `d · scale` ([`Unpack::TWO_SCALES`]).

use std::arch::x86_64::*;

use super::unpack::{f16_at, widen, Scales, Unpack};

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`.
#[allow(non_camel_case_types)]
pub(super) struct Q4_K;
/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`.
#[allow(non_camel_case_types)]
pub(super) struct Q5_K;
/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`.
#[allow(non_camel_case_types)]
pub(super) struct Q6_K;

/// The 8 6-bit scales and 8 6-bit minimums packed in the 12 bytes at `p`, as llama.cpp
/// unpacks them (`utmp`): scales in bytes 0..8, minimums in 8..16 (the same values as
/// `scale_min_k4`).
#[inline(always)]
unsafe fn scales_mins_k4(p: *const u8) -> [u32; 4] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let u = |i: usize| p.add(4 * i).cast::<u32>().read_unaligned();
    let (u0, u1, u2) = (u(0), u(1), u(2));
    [
        u0 & K1,
        (u2 & K2) | (((u0 >> 6) & K3) << 4),
        u1 & K1,
        ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4),
    ]
}

/// `Q4_K`/`Q5_K` scales: `d · scale_s` and `−(dmin · min_s)` (as the GGUF reader computes it).
#[inline(always)]
unsafe fn scales_q45_k(b: *const u8) -> Scales {
    let packed = scales_mins_k4(b.add(4));
    let as_f32 =
        |half: *const u32| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(half.cast())));
    let d = _mm256_mul_ps(as_f32(packed.as_ptr()), _mm256_set1_ps(f16_at(b)));
    let min = _mm256_mul_ps(
        as_f32(packed.as_ptr().add(2)),
        _mm256_set1_ps(f16_at(b.add(2))),
    );
    let mut s = Scales::default();
    _mm256_storeu_ps(s.d.as_mut_ptr(), d);
    _mm256_storeu_ps(s.m.as_mut_ptr(), _mm256_sub_ps(_mm256_setzero_ps(), min));
    s
}

/// Sub-block `s`'s nibbles: sub-blocks `2p` and `2p + 1` share the 32 bytes at `qs + 32p`,
/// low nibbles then high ones.
#[inline(always)]
unsafe fn nibbles_k(qs: *const u8, s: usize) -> __m256i {
    let raw = _mm256_loadu_si256(qs.add(32 * (s / 2)).cast());
    let shifted = _mm256_srl_epi16(raw, _mm_cvtsi32_si128(4 * (s % 2) as i32));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F))
}

impl Unpack for Q4_K {
    const BYTES: usize = 144;
    const SUBS: usize = 8;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        scales_q45_k(b)
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, s: usize) -> [__m256i; 2] {
        widen(nibbles_k(b.add(16), s))
    }
}

impl Unpack for Q5_K {
    const BYTES: usize = 176;
    const SUBS: usize = 8;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        scales_q45_k(b)
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, s: usize) -> [__m256i; 2] {
        // Bit `s` of `qh[l]` is element `l`'s fifth bit: shifted to bit 0 within each byte
        // (the 16-bit shift moves in bits of the next byte, which the mask drops), then to 4.
        let qh = _mm256_loadu_si256(b.add(16).cast());
        let bit = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s as i32)),
            _mm256_set1_epi8(1),
        );
        let high = _mm256_slli_epi16::<4>(bit);
        widen(_mm256_or_si256(nibbles_k(b.add(48), s), high))
    }
}

impl Unpack for Q6_K {
    const BYTES: usize = 210;
    const SUBS: usize = 8;
    const HAS_MIN: bool = false;
    const TWO_SCALES: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        // The 16 i8 scales, one per 16 values in order: even ones for the first half of each
        // sub-block, odd ones for the second (f16 · i8 is exact in f32).
        let d = _mm256_set1_ps(f16_at(b.add(208)));
        let mut even_odd = [0i8; 16];
        for (i, v) in even_odd.iter_mut().enumerate() {
            *v = b.add(192 + 2 * (i % 8) + i / 8).cast::<i8>().read();
        }
        let as_f32 = |p: *const i8| {
            _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))),
                d,
            )
        };
        let mut s = Scales::default();
        _mm256_storeu_ps(s.d.as_mut_ptr(), as_f32(even_odd.as_ptr()));
        _mm256_storeu_ps(s.d_hi.as_mut_ptr(), as_f32(even_odd.as_ptr().add(8)));
        s
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, s: usize) -> [__m256i; 2] {
        // Halves of 128 values; in half `n`, group `g` takes the low (g < 2) or high nibbles
        // of ql[64n + 32(g % 2) + l] and bits 2g..2g+2 of qh[32n + l].
        let (n, g) = (s / 4, s % 4);
        let ql = _mm256_loadu_si256(b.add(64 * n + 32 * (g % 2)).cast());
        let qh = _mm256_loadu_si256(b.add(128 + 32 * n).cast());
        let lo = _mm256_and_si256(
            _mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (g / 2) as i32)),
            _mm256_set1_epi8(0x0F),
        );
        let hi = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32)),
            _mm256_set1_epi8(3),
        );
        let q = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
        widen(_mm256_sub_epi8(q, _mm256_set1_epi8(32)))
    }
}
