//! The aarch64 dot products of weight blocks with [`Q8Block`] activations (llama.cpp's
//! `ggml_vec_dot_q4_0_q8_0` family on NEON with the dot-product extension): one weight row
//! against `R` activation rows at once, so that each weight block is loaded and unpacked once
//! for `R` rows. The same formats and arithmetic as the AVX2 `maddubs` kernel (`avx2.rs`).
//!
//! Per block: the 32 weight codes are widened to two 16-byte vectors of signed codes (Q4_0:
//! nibble − 8; Q4_1: the nibble, 0..16; Q8_0: as stored); for each of the activation's two
//! levels, two `sdot`s add the products of 4 consecutive bytes into 4 i32 lanes (|lane| ≤
//! 8·128·127); the levels meet in integers, `254·first + residual` (|lane| < 2²⁵, no overflow;
//! the conversion to f32 rounds a lane above 2²⁴ by at most one part in 2²⁴), and the lanes are
//! accumulated with `d_w·d_a` by FMA. The minimum of Q4_1 adds `m_w·s_a` per block in a
//! scalar. Same value as [`super::QuantFormat::dot_scalar`] up to f32 rounding.
//!
//! `sdot` (`vdotq_s32`) is still an unstable intrinsic in Rust's `std::arch`, so it is written
//! as one `asm!` instruction.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use super::q8::{Q8Block, RESIDUAL_STEPS};
use super::QuantFormat;

/// Proof that this CPU has NEON with the dot-product extension: the only way to get one is
/// [`Neon::detect`], which is what makes calling the `target_feature` functions below sound.
#[derive(Clone, Copy, Debug)]
pub struct Neon(());

impl Neon {
    /// `Some` when the CPU reports NEON and `dotprod` (`std` caches the answer).
    pub fn detect() -> Option<Neon> {
        let ok = std::arch::is_aarch64_feature_detected!("neon")
            && std::arch::is_aarch64_feature_detected!("dotprod");
        ok.then_some(Neon(()))
    }

    /// Whether `fmt` has this kernel (the others run the scalar reference on aarch64).
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
    /// When `fmt` has no kernel here ([`Neon::has_kernel`]), `w` is not a whole number of
    /// blocks or `acts` holds fewer than `R·nb` blocks.
    pub fn dot_rows<const R: usize>(
        self,
        fmt: QuantFormat,
        w: &[u8],
        acts: &[Q8Block],
    ) -> [f32; R] {
        let nb = w.len() / fmt.block_bytes();
        assert!(nb * fmt.block_bytes() == w.len() && acts.len() >= R * nb);
        // SAFETY: `self` exists, so the CPU has NEON and dotprod; the lengths are checked.
        unsafe {
            match fmt {
                QuantFormat::Q4_0 => dot_rows::<Q4_0, R>(w, acts, nb),
                QuantFormat::Q4_1 => dot_rows::<Q4_1, R>(w, acts, nb),
                QuantFormat::Q8_0 => dot_rows::<Q8_0, R>(w, acts, nb),
                other => panic!("{other:?} has no NEON kernel (Neon::has_kernel)"),
            }
        }
    }
}

/// How one format's block is unpacked into 32 signed codes.
trait Block {
    /// Bytes per block.
    const BYTES: usize;
    /// Whether the block has a minimum (an f16 at byte 2, codes from byte 4).
    const MIN: bool;
    /// The block's 32 codes at `b`: elements 0..16 and 16..32.
    ///
    /// # Safety
    ///
    /// `b` is valid for [`Self::BYTES`] reads; the CPU has NEON.
    unsafe fn codes(b: *const u8) -> (int8x16_t, int8x16_t);
}

/// Q4_0 marker.
struct Q4_0;
/// Q4_1 marker.
struct Q4_1;
/// Q8_0 marker.
struct Q8_0;

/// The 16 bytes at `qs` as 32 nibbles: low nibbles are elements 0..16, high ones 16..32.
///
/// # Safety
///
/// `qs` is valid for 16 reads; the CPU has NEON.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> (uint8x16_t, uint8x16_t) {
    let raw = vld1q_u8(qs);
    (vandq_u8(raw, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(raw))
}

impl Block for Q4_0 {
    const BYTES: usize = 18;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(b.add(2));
        let eight = vdupq_n_s8(8);
        (
            vsubq_s8(vreinterpretq_s8_u8(lo), eight),
            vsubq_s8(vreinterpretq_s8_u8(hi), eight),
        )
    }
}

impl Block for Q4_1 {
    const BYTES: usize = 20;
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> (int8x16_t, int8x16_t) {
        let (lo, hi) = nibbles(b.add(4));
        (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
    }
}

impl Block for Q8_0 {
    const BYTES: usize = 34;
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn codes(b: *const u8) -> (int8x16_t, int8x16_t) {
        (vld1q_s8(b.add(2).cast()), vld1q_s8(b.add(18).cast()))
    }
}

/// `acc + Σ` of the products of each 4 consecutive bytes of `a` and `b`, per i32 lane.
///
/// # Safety
///
/// The CPU has the dot-product extension.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// The f16 at `p`, as f32.
///
/// # Safety
///
/// `p` is valid for 2 reads.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    f16::from_bits(p.cast::<u16>().read_unaligned()).to_f32()
}

/// See [`Neon::dot_rows`].
///
/// # Safety
///
/// The CPU has NEON and dotprod; `w` holds `nb` blocks of `B`, `acts` at least `R·nb`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_rows<B: Block, const R: usize>(w: &[u8], acts: &[Q8Block], nb: usize) -> [f32; R] {
    let mut acc = [vdupq_n_f32(0.0); R];
    let mut mins = [0.0f32; R];
    for b in 0..nb {
        let wp = w.as_ptr().add(b * B::BYTES);
        let (lo, hi) = B::codes(wp);
        let dw = f16_at(wp);
        // One level's 4 i32 lanes of Σ codes · qs.
        let level = |qs: &[i8; 32]| {
            let q = qs.as_ptr();
            let l = sdot(vdupq_n_s32(0), lo, vld1q_s8(q));
            sdot(l, hi, vld1q_s8(q.add(16)))
        };
        for r in 0..R {
            let a = acts.get_unchecked(r * nb + b);
            let lanes = vmlaq_n_s32(level(&a.qs2), level(&a.qs), RESIDUAL_STEPS);
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(lanes), dw * a.d);
            if B::MIN {
                mins[r] += f16_at(wp.add(2)) * a.s;
            }
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = vaddvq_f32(acc[r]) + mins[r];
    }
    out
}
