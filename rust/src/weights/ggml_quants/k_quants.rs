//! The k-quants (`Q2_K` to `Q6_K`): 256-element super-blocks of sub-blocks, each with its own
//! quantized scale (and min).

use super::f16_at;

/// `block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin; }`: 16 groups of 16 with a 4-bit
/// scale and a 4-bit min each; `y = d * scale * q2 - dmin * min`.
pub(super) fn dequantize_q2_k(x: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&x[0..16], &x[16..80]);
    let (d, dmin) = (f16_at(x, 80), f16_at(x, 82));
    let mut out = y.chunks_exact_mut(16);
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half in [&q[..16], &q[16..]] {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0x0F), dmin * f32::from(sc >> 4));
                for (y, &q) in out.next().into_iter().flatten().zip(half) {
                    *y = dl * f32::from((q >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// `block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; }`: 16 groups of 16 with 6-bit
/// signed scales; the high bit of each 3-bit value comes from `hmask` (bit clear means -4).
pub(super) fn dequantize_q3_k(x: &[u8], y: &mut [f32]) {
    let (hmask, qs, packed) = (&x[0..32], &x[32..96], &x[96..108]);
    let d = f16_at(x, 108);
    let mut scales = [0i8; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0F
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    let mut out = y.chunks_exact_mut(16);
    let (mut is, mut m) = (0, 1u8);
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for l0 in [0, 16] {
                let dl = d * f32::from(scales[is]);
                is += 1;
                for (l, y) in out.next().into_iter().flatten().enumerate() {
                    let low = ((q[l0 + l] >> shift) & 3) as i8;
                    let high = if hmask[l0 + l] & m != 0 { 0 } else { 4 };
                    *y = dl * f32::from(low - high);
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block (`get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }`: 8 sub-blocks of 32;
/// `y = d * scale * nibble - dmin * min`.
pub(super) fn dequantize_q4_k(x: &[u8], y: &mut [f32]) {
    let (d, dmin, scales, qs) = (f16_at(x, 0), f16_at(x, 2), &x[4..16], &x[16..144]);
    for (pair, (q, ys)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        for (l, &q) in q.iter().enumerate() {
            ys[l] = d1 * f32::from(q & 0x0F) - m1;
            ys[l + 32] = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// `block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`: as Q4_K with a
/// fifth bit per value from `qh` (bit `2*pair` for the low nibbles, `2*pair+1` for the high).
pub(super) fn dequantize_q5_k(x: &[u8], y: &mut [f32]) {
    let (d, dmin, scales) = (f16_at(x, 0), f16_at(x, 2), &x[4..16]);
    let (qh, qs) = (&x[16..48], &x[48..176]);
    for (pair, (q, ys)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * pair, scales);
        let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        for (l, &q) in q.iter().enumerate() {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            ys[l] = d1 * f32::from((q & 0x0F) + h1) - m1;
            ys[l + 32] = d2 * f32::from((q >> 4) + h2) - m2;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }`: 16 groups of 16;
/// `y = d * scale * (q6 - 32)`.
pub(super) fn dequantize_q6_k(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 208);
    for (n, ys) in y.chunks_exact_mut(128).enumerate() {
        let (ql, qh) = (&x[64 * n..64 * n + 64], &x[128 + 32 * n..128 + 32 * n + 32]);
        let sc = &x[192 + 8 * n..192 + 8 * n + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            ys[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            ys[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            ys[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            ys[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
    }
}
