//! How the AVX2 tile (`tile.rs`) reads each format: a block's per-sub-block f32 scales and
//! minimums, and each 32-element sub-block's integer codes widened to two vectors of 16 i16
//! (elements 0..16, 16..32), so that `w[i] = codes[i] · d_s + m_s`.
//!
//! The 32-element formats here (one sub-block per block); the k-quants in `unpack_k.rs`. The
//! bit manipulation follows llama.cpp's `ggml_vec_dot_*` AVX2 code (`bytes_from_bits_32` for
//! Q5_0/Q5_1's fifth bits), adapted to codes widened to 16 bits rather than bytes for `maddubs`.

use std::arch::x86_64::*;

/// Per-sub-block scales and minimums of one block (entries past the format's
/// [`Unpack::SUBS`] are unused): `w[i] = codes[i] · d[s] + m[s]`, or for a format with
/// [`Unpack::TWO_SCALES`], `d[s]` for elements 0..16 and `d_hi[s]` for 16..32.
#[derive(Clone, Copy, Default)]
pub(super) struct Scales {
    pub d: [f32; 8],
    pub d_hi: [f32; 8],
    pub m: [f32; 8],
}

impl Scales {
    /// One sub-block's scale and minimum.
    #[inline(always)]
    pub fn one(d: f32, m: f32) -> Scales {
        let mut s = Scales::default();
        s.d[0] = d;
        s.m[0] = m;
        s
    }
}

/// One block format as the tile reads it.
pub(super) trait Unpack {
    /// Bytes per block.
    const BYTES: usize;
    /// 32-element sub-blocks per block: 1, or 8 for a k-quant super-block.
    const SUBS: usize;
    /// Whether the format has minimums (else every `m` is 0 and the tile skips them).
    const HAS_MIN: bool;
    /// Whether a sub-block's two halves have scales of their own (`Scales::d_hi`).
    const TWO_SCALES: bool = false;
    /// The scales and minimums of the block at `b`.
    ///
    /// # Safety
    ///
    /// `b` is valid for [`Self::BYTES`] reads; the CPU has AVX2 and F16C.
    unsafe fn scales(b: *const u8) -> Scales;
    /// Sub-block `s`'s codes as i16, elements 0..16 and 16..32.
    ///
    /// # Safety
    ///
    /// `b` is valid for [`Self::BYTES`] reads, `s < SUBS`; the CPU has AVX2.
    unsafe fn codes(b: *const u8, s: usize) -> [__m256i; 2];
}

/// The f16 at `p`, as f32.
///
/// # Safety
///
/// `p` is valid for 2 reads; the CPU has F16C.
#[inline(always)]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = i32::from(p.cast::<u16>().read_unaligned());
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// 32 bytes widened to i16 (signed), bytes 0..16 then 16..32.
#[inline(always)]
pub(super) unsafe fn widen(v: __m256i) -> [__m256i; 2] {
    [
        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)),
    ]
}

/// The 16 bytes at `qs` as 32 nibbles in element order: low nibbles in bytes 0..16, high
/// nibbles in 16..32 (the 32-element formats' layout).
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(qs.cast());
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
    _mm256_set_m128i(hi, lo)
}

/// The little-endian u32 at `qh` as 32 bytes, byte `j` 0xFF where bit `j` is set, else 0
/// (llama.cpp's `bytes_from_bits_32`: byte `j` gets byte `j / 8` of the word, all bits but
/// bit `j % 8` are forced on, and only bytes whose bit was set compare equal to all-ones).
#[inline(always)]
unsafe fn bytes_from_bits(qh: *const u8) -> __m256i {
    let x = qh.cast::<i32>().read_unaligned();
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), spread);
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

/// The 5-bit codes (nibbles at `qs`, fifth bits at `qh`) in element order, `0..32`.
#[inline(always)]
unsafe fn q5(qh: *const u8, qs: *const u8) -> __m256i {
    let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles(qs), high)
}

/// `{ f16 d; u8 qs[16] }`, `w = (nibble − 8) · d`.
pub(super) struct Q4_0;
/// `{ f16 d; f16 m; u8 qs[16] }`, `w = nibble · d + m`.
pub(super) struct Q4_1;
/// `{ f16 d; u8 qh[4]; u8 qs[16] }`, `w = (q5 − 16) · d`.
pub(super) struct Q5_0;
/// `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`, `w = q5 · d + m`.
pub(super) struct Q5_1;
/// `{ f16 d; i8 qs[32] }`, `w = q · d`.
pub(super) struct Q8_0;

impl Unpack for Q4_0 {
    const BYTES: usize = 18;
    const SUBS: usize = 1;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        Scales::one(f16_at(b), 0.0)
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, _s: usize) -> [__m256i; 2] {
        widen(_mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)))
    }
}

impl Unpack for Q4_1 {
    const BYTES: usize = 20;
    const SUBS: usize = 1;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        Scales::one(f16_at(b), f16_at(b.add(2)))
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, _s: usize) -> [__m256i; 2] {
        widen(nibbles(b.add(4)))
    }
}

impl Unpack for Q5_0 {
    const BYTES: usize = 22;
    const SUBS: usize = 1;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        Scales::one(f16_at(b), 0.0)
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, _s: usize) -> [__m256i; 2] {
        widen(_mm256_sub_epi8(
            q5(b.add(2), b.add(6)),
            _mm256_set1_epi8(16),
        ))
    }
}

impl Unpack for Q5_1 {
    const BYTES: usize = 24;
    const SUBS: usize = 1;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        Scales::one(f16_at(b), f16_at(b.add(2)))
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, _s: usize) -> [__m256i; 2] {
        widen(q5(b.add(4), b.add(8)))
    }
}

impl Unpack for Q8_0 {
    const BYTES: usize = 34;
    const SUBS: usize = 1;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn scales(b: *const u8) -> Scales {
        Scales::one(f16_at(b), 0.0)
    }
    #[inline(always)]
    unsafe fn codes(b: *const u8, _s: usize) -> [__m256i; 2] {
        [
            _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(2).cast())),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(18).cast())),
        ]
    }
}
