//! The AVX2 register tile: `W` weight rows × `R` activation rows per pass, with the
//! activations' two 8-bit levels joined into one 16-bit code and multiplied by
//! `_mm256_madd_epi16`.
//!
//! Why 16 bits rather than `maddubs` on each level (`avx2.rs`): per pair of blocks, the
//! `maddubs` kernel runs two sign moves, two `maddubs` and two `madd` (one per level); here
//! the weight block is widened to i16 once per tile and reused by `R` activation rows, and each
//! pair costs two `madd`, one add, one conversion and one FMA. The integer sums are the same
//! (`Σ codes · (254·qs + qs2)`, |lane| ≤ 4·128·32,385 < 2²⁴, exact in f32), so the result
//! equals [`super::QuantFormat::dot_scalar`] up to the order of f32 additions.

use std::arch::x86_64::*;

use super::avx2::{hsum, Avx2};
use super::q8::{Q8Block, RESIDUAL_STEPS};
use super::{QuantFormat, BLOCK};

/// One activation block as the tile reads it: `x[i] ≈ d · c[i]`, `c = 254·qs + qs2`,
/// `s` = the block's represented sum (as in [`Q8Block`]).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct A16Block {
    /// The combined codes, |c| ≤ 32,385.
    pub c: [i16; BLOCK],
    /// The scale.
    pub d: f32,
    /// `d · Σ c`.
    pub s: f32,
}

impl From<&Q8Block> for A16Block {
    fn from(b: &Q8Block) -> A16Block {
        let mut c = [0i16; BLOCK];
        for ((c, &q), &q2) in c.iter_mut().zip(&b.qs).zip(&b.qs2) {
            // |254·127 + 127| = 32,385 < 2¹⁵: fits.
            *c = (RESIDUAL_STEPS as i16) * i16::from(q) + i16::from(q2);
        }
        A16Block { c, d: b.d, s: b.s }
    }
}

/// Proof that this CPU has AVX2, FMA and F16C (see [`super::avx2::Avx2`]).
#[derive(Clone, Copy, Debug)]
pub struct Tile(());

impl Tile {
    /// `Some` when the CPU reports AVX2, FMA and F16C (the features [`Avx2`] proves).
    pub fn detect() -> Option<Tile> {
        Avx2::detect().map(|_| Tile(()))
    }

    /// `out[wr][r] = w_row(wr) · acts[r·nb..(r+1)·nb]` for the `W` consecutive weight rows at
    /// the start of `w` (each `row_bytes` long, `nb = row_bytes / fmt.block_bytes()` blocks)
    /// and `R` activation rows.
    ///
    /// # Panics
    ///
    /// When `fmt` is not in [`QuantFormat::SIMD`], `w` holds fewer than `W` rows, a row is not
    /// whole blocks, or `acts` holds fewer than `R·nb` blocks.
    pub fn dot<const W: usize, const R: usize>(
        self,
        fmt: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        acts: &[A16Block],
    ) -> [[f32; R]; W] {
        let nb = row_bytes / fmt.block_bytes();
        assert!(nb * fmt.block_bytes() == row_bytes && w.len() >= W * row_bytes);
        assert!(acts.len() >= R * nb);
        // SAFETY: `self` exists, so the CPU has AVX2, FMA and F16C; the lengths are checked.
        unsafe {
            match fmt {
                QuantFormat::Q4_0 => tile::<Q4_0, W, R>(w.as_ptr(), row_bytes, acts, nb),
                QuantFormat::Q4_1 => tile::<Q4_1, W, R>(w.as_ptr(), row_bytes, acts, nb),
                QuantFormat::Q8_0 => tile::<Q8_0, W, R>(w.as_ptr(), row_bytes, acts, nb),
                other => panic!("{other:?} has no AVX2 kernel (QuantFormat::SIMD)"),
            }
        }
    }
}

/// How one format's block is widened to 32 i16 codes.
trait Block {
    /// Bytes per block.
    const BYTES: usize;
    /// Byte offset of the f16 minimum (`Q4_1`), if the format has one.
    const MIN_AT: Option<usize>;
    /// Elements 0..16 and 16..32 of the block at `b` as i16.
    ///
    /// # Safety
    ///
    /// `b` is valid for [`Self::BYTES`] reads; the CPU has AVX2.
    unsafe fn codes(b: *const u8) -> [__m256i; 2];
}

struct Q4_0;
struct Q4_1;
struct Q8_0;

/// The 16 bytes at `qs` as 32 nibbles widened to i16: low nibbles (elements 0..16), high.
#[inline(always)]
unsafe fn nibbles16(qs: *const u8) -> [__m256i; 2] {
    let raw = _mm_loadu_si128(qs.cast());
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
    [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)]
}

impl Block for Q4_0 {
    const BYTES: usize = 18;
    const MIN_AT: Option<usize> = None;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> [__m256i; 2] {
        let [lo, hi] = nibbles16(b.add(2));
        let eight = _mm256_set1_epi16(8);
        [_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight)]
    }
}

impl Block for Q4_1 {
    const BYTES: usize = 20;
    const MIN_AT: Option<usize> = Some(2);
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> [__m256i; 2] {
        nibbles16(b.add(4))
    }
}

impl Block for Q8_0 {
    const BYTES: usize = 34;
    const MIN_AT: Option<usize> = None;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> [__m256i; 2] {
        [
            _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(2).cast())),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(18).cast())),
        ]
    }
}

/// The f16 at `p`, as f32.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = i32::from(p.cast::<u16>().read_unaligned());
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// See [`Tile::dot`].
///
/// # Safety
///
/// The CPU has AVX2, FMA and F16C; `w` holds `W` rows of `nb` blocks of `B` at `row_bytes`
/// apart, `acts` at least `R·nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<B: Block, const W: usize, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &[A16Block],
    nb: usize,
) -> [[f32; R]; W] {
    let mut acc = [[_mm256_setzero_ps(); R]; W];
    let mut mins = [[0.0f32; R]; W];
    for b in 0..nb {
        let mut codes = [[_mm256_setzero_si256(); 2]; W];
        let mut dw = [_mm256_setzero_ps(); W];
        let mut mw = [0.0f32; W];
        for wr in 0..W {
            let p = w.add(wr * row_bytes + b * B::BYTES);
            codes[wr] = B::codes(p);
            dw[wr] = _mm256_set1_ps(f16_at(p));
            if let Some(at) = B::MIN_AT {
                mw[wr] = f16_at(p.add(at));
            }
        }
        for r in 0..R {
            let a = acts.get_unchecked(r * nb + b);
            let lo = _mm256_loadu_si256(a.c.as_ptr().cast());
            let hi = _mm256_loadu_si256(a.c.as_ptr().add(16).cast());
            let da = _mm256_set1_ps(a.d);
            for wr in 0..W {
                let lanes = _mm256_add_epi32(
                    _mm256_madd_epi16(codes[wr][0], lo),
                    _mm256_madd_epi16(codes[wr][1], hi),
                );
                let scale = _mm256_mul_ps(dw[wr], da);
                acc[wr][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, acc[wr][r]);
                if B::MIN_AT.is_some() {
                    mins[wr][r] += mw[wr] * a.s;
                }
            }
        }
    }
    let mut out = [[0.0f32; R]; W];
    for wr in 0..W {
        for r in 0..R {
            out[wr][r] = hsum(acc[wr][r]) + mins[wr][r];
        }
    }
    out
}

/// Weight rows per tile pass.
const TILE_W: usize = 2;
/// Activation rows per tile pass.
pub const TILE_R: usize = 4;

/// One task with the tile: `pieces[i][jj] = acts[i] · w[j0 + jj]` for every activation row
/// `i` (one piece per row, all of one length), [`TILE_R`] activation rows × [`TILE_W`]
/// weight rows at a time, so each weight block is widened once per `TILE_R` rows and each
/// activation block loaded once per `TILE_W` weight rows.
pub fn task(
    t: Tile,
    w: &super::QuantMatrix,
    acts: &[A16Block],
    j0: usize,
    pieces: &mut [&mut [f32]],
) {
    let nb = w.cols() / BLOCK;
    let width = pieces.first().map_or(0, |p| p.len());
    for (g, group) in pieces.chunks_mut(TILE_R).enumerate() {
        let a = &acts[g * TILE_R * nb..(g * TILE_R + group.len()) * nb];
        let mut jj = 0;
        while jj < width {
            let rows = if width - jj >= TILE_W { TILE_W } else { 1 };
            let wb = w.rows_bytes(j0 + jj, rows);
            match (rows, group.len()) {
                (TILE_W, 1) => put::<TILE_W, 1>(t, w, wb, a, group, jj),
                (TILE_W, 2) => put::<TILE_W, 2>(t, w, wb, a, group, jj),
                (TILE_W, 3) => put::<TILE_W, 3>(t, w, wb, a, group, jj),
                (TILE_W, _) => put::<TILE_W, TILE_R>(t, w, wb, a, group, jj),
                (_, 1) => put::<1, 1>(t, w, wb, a, group, jj),
                (_, 2) => put::<1, 2>(t, w, wb, a, group, jj),
                (_, 3) => put::<1, 3>(t, w, wb, a, group, jj),
                _ => put::<1, TILE_R>(t, w, wb, a, group, jj),
            }
            jj += rows;
        }
    }
}

/// One `W × R` tile written into columns `jj..jj + W` of the group's `R` pieces.
#[inline(always)]
fn put<const W: usize, const R: usize>(
    t: Tile,
    w: &super::QuantMatrix,
    wb: &[u8],
    a: &[A16Block],
    group: &mut [&mut [f32]],
    jj: usize,
) {
    let d = t.dot::<W, R>(w.format(), wb, w.row_bytes(), a);
    for (wr, d) in d.iter().enumerate() {
        for (piece, &v) in group.iter_mut().zip(d) {
            piece[jj + wr] = v;
        }
    }
}
