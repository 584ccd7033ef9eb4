//! The k-quant formats (`Q4_K`, `Q5_K`, `Q6_K`: 256-element super-blocks) seen as eight
//! 32-element sub-blocks, each lined up with one [`super::Q8Block`] of activations.
//!
//! A sub-block decodes to `w[i] = codes[i] · d + m` with the sub-block's integer scale folded
//! into the codes (`codes = scale · q`, so `d` is the super-block's f16 scale): the dot product
//! stays one exact integer sum and one FMA per activation block, as for the 32-element formats.
//! `Q6_K` has two 16-element groups per sub-block with a scale each, which the folding also
//! covers.

use half::f16;

use super::BLOCK;
use crate::weights::ggml_quants::scale_min_k4;

/// The f16 at byte `at` of `b`.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Sub-block `s` (0..8) of a `Q4_K` (`high_bits = false`) or `Q5_K` (`true`) super-block,
/// `{ f16 d; f16 dmin; u8 scales[12]; [u8 qh[32];] u8 qs[128] }`:
/// `w = d · scale_s · q − dmin · min_s`, `q` the nibble (plus 16 for a set fifth bit).
pub(super) fn decode_q45_k(b: &[u8], s: usize, high_bits: bool) -> ([i32; BLOCK], f32, f32) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scale, min) = scale_min_k4(s, &b[4..16]);
    let (qh, qs) = if high_bits {
        (Some(&b[16..48]), &b[48..176])
    } else {
        (None, &b[16..144])
    };
    // Sub-blocks 2p and 2p + 1 share 32 bytes: low nibbles, then high ones.
    let q = &qs[32 * (s / 2)..32 * (s / 2) + 32];
    let shift = 4 * (s % 2);
    let mut codes = [0i32; BLOCK];
    for (l, c) in codes.iter_mut().enumerate() {
        let high = qh.map_or(0, |qh| i32::from((qh[l] >> s) & 1) << 4);
        *c = i32::from(scale) * (i32::from((q[l] >> shift) & 0x0F) + high);
    }
    // As the GGUF reader computes it (`dmin · min` in f32, subtracted).
    (codes, d, -(dmin * f32::from(min)))
}

/// Sub-block `s` (0..8) of a `Q6_K` super-block, `{ u8 ql[128]; u8 qh[64]; i8 scales[16];
/// f16 d }`: `w = d · scale_g · (q6 − 32)`, one scale per 16 values.
pub(super) fn decode_q6_k(b: &[u8], s: usize) -> ([i32; BLOCK], f32, f32) {
    // Halves of 128 values; in a half, sub-block g takes the low (g < 2) or high nibbles of
    // ql[l + 32·(g % 2)] and bits 2g..2g+2 of qh[l].
    let (n, g) = (s / 4, s % 4);
    let ql = &b[64 * n + 32 * (g % 2)..64 * n + 32 * (g % 2) + 32];
    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
    let scales = &b[192 + 8 * n..192 + 8 * n + 8];
    let shift = 4 * (g / 2);
    let mut codes = [0i32; BLOCK];
    for (l, c) in codes.iter_mut().enumerate() {
        let q = ((ql[l] >> shift) & 0x0F) | (((qh[l] >> (2 * g)) & 3) << 4);
        let scale = i32::from(scales[2 * g + l / 16] as i8);
        *c = scale * (i32::from(q) - 32);
    }
    (codes, f16_at(b, 208), 0.0)
}
