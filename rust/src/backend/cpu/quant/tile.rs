//! The AVX2 register tile: `W` weight rows × `R` activation rows per pass, with the
//! activations' two 8-bit levels joined into one 16-bit code and multiplied by
//! `_mm256_madd_epi16`, for every [`QuantFormat`] (each unpacked by `unpack.rs` or
//! `unpack_k.rs` into 32 i16 codes per 32-element sub-block with an f32 scale and minimum).
//!
//! Why 16 bits rather than `maddubs` on each level (`avx2.rs`): per pair of blocks, the
//! `maddubs` kernel runs two sign moves, two `maddubs` and two `madd` (one per level); here
//! the weight block is widened to i16 once per tile and reused by `R` activation rows, and each
//! pair costs two `madd`, one add, one conversion and one FMA. The integer sums are the same
//! (`Σ codes · (254·qs + qs2)`, |lane| ≤ 4·128·32,385 < 2²⁴, exact in f32; the k-quants'
//! sub-block scales go with the f32 scale, Q6_K's two per sub-block on each half's lanes), so
//! the result equals [`super::QuantFormat::dot_scalar`] up to f32 rounding.

use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::q8::{Q8Block, RESIDUAL_STEPS};
use super::unpack::{Scales, Unpack, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use super::unpack_k::{Q4_K, Q5_K, Q6_K};
use super::{QuantFormat, BLOCK};
use crate::backend::cpu::simd::hsum;

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
    /// the start of `w` (each `row_bytes` long, whole blocks of `fmt`: `nb` activation blocks
    /// of 32 elements) and `R` activation rows.
    ///
    /// # Panics
    ///
    /// When `w` holds fewer than `W` rows, a row is not whole blocks, or `acts` holds fewer
    /// than `R·nb` blocks.
    pub fn dot<const W: usize, const R: usize>(
        self,
        fmt: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        acts: &[A16Block],
    ) -> [[f32; R]; W] {
        let nblk = row_bytes / fmt.block_bytes();
        assert!(nblk * fmt.block_bytes() == row_bytes && w.len() >= W * row_bytes);
        assert!(acts.len() >= R * nblk * (fmt.block_elems() / BLOCK));
        let w = w.as_ptr();
        // SAFETY: `self` exists, so the CPU has AVX2, FMA and F16C; the lengths are checked.
        unsafe {
            match fmt {
                QuantFormat::Q4_0 => tile::<Q4_0, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q4_1 => tile::<Q4_1, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q5_0 => tile::<Q5_0, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q5_1 => tile::<Q5_1, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q8_0 => tile::<Q8_0, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q4_K => tile::<Q4_K, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q5_K => tile::<Q5_K, W, R>(w, row_bytes, acts, nblk),
                QuantFormat::Q6_K => tile::<Q6_K, W, R>(w, row_bytes, acts, nblk),
            }
        }
    }
}

/// See [`Tile::dot`]: for each block, every weight row's scales once; for each of its
/// sub-blocks, every weight row's codes once, then the `R` activation blocks against them.
///
/// # Safety
///
/// The CPU has AVX2, FMA and F16C; `w` holds `W` rows of `nblk` blocks of `B` at `row_bytes`
/// apart, `acts` at least `R · nblk · B::SUBS` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<B: Unpack, const W: usize, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    acts: &[A16Block],
    nblk: usize,
) -> [[f32; R]; W] {
    let nb = nblk * B::SUBS;
    let mut acc = [[_mm256_setzero_ps(); R]; W];
    let mut mins = [[0.0f32; R]; W];
    for blk in 0..nblk {
        let mut p = [w; W];
        let mut scales = [Scales::default(); W];
        for wr in 0..W {
            p[wr] = w.add(wr * row_bytes + blk * B::BYTES);
            if B::SUBS > 1 && blk + PREFETCH_BLOCKS < nblk {
                prefetch_block::<B>(p[wr].add(PREFETCH_BLOCKS * B::BYTES));
            }
            scales[wr] = B::scales(p[wr]);
        }
        for s in 0..B::SUBS {
            let b = blk * B::SUBS + s;
            let mut codes = [[_mm256_setzero_si256(); 2]; W];
            for wr in 0..W {
                codes[wr] = B::codes(p[wr], s);
            }
            for r in 0..R {
                let a = acts.get_unchecked(r * nb + b);
                let lo = _mm256_loadu_si256(a.c.as_ptr().cast());
                let hi = _mm256_loadu_si256(a.c.as_ptr().add(16).cast());
                let da = _mm256_set1_ps(a.d);
                for wr in 0..W {
                    let (c, sc) = (&codes[wr], &scales[wr]);
                    let scale = _mm256_mul_ps(_mm256_set1_ps(sc.d[s]), da);
                    if B::TWO_SCALES {
                        let lo = _mm256_cvtepi32_ps(_mm256_madd_epi16(c[0], lo));
                        let hi = _mm256_cvtepi32_ps(_mm256_madd_epi16(c[1], hi));
                        let scale_hi = _mm256_mul_ps(_mm256_set1_ps(sc.d_hi[s]), da);
                        let sum = _mm256_fmadd_ps(hi, scale_hi, _mm256_mul_ps(lo, scale));
                        acc[wr][r] = _mm256_add_ps(acc[wr][r], sum);
                    } else {
                        let lanes = _mm256_add_epi32(
                            _mm256_madd_epi16(c[0], lo),
                            _mm256_madd_epi16(c[1], hi),
                        );
                        acc[wr][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, acc[wr][r]);
                    }
                    if B::HAS_MIN {
                        mins[wr][r] += scales[wr].m[s] * a.s;
                    }
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

/// How many k-quant super-blocks ahead of the one in use the tile asks for.
const PREFETCH_BLOCKS: usize = 2;

/// Asks for the cache lines of the block at `p`: a k-quant block spans 3–4 lines and its
/// scales are read before its codes, an order the hardware prefetcher follows poorly.
#[inline(always)]
unsafe fn prefetch_block<B: Unpack>(p: *const u8) {
    for line in (0..B::BYTES).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.add(line).cast());
    }
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
