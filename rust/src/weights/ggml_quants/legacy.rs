//! The 32-element block types (`Q8_0`, `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`): one f16 scale (and
//! min) per block.

use super::f16_at;

/// `block_q8_0 { half d; int8 qs[32]; }`: `y = q * d`.
pub(super) fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (y, &q) in y.iter_mut().zip(&x[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_q4_0 { half d; u8 qs[16]; }`: low nibbles are elements 0..16, high nibbles 16..32;
/// `y = (nibble - 8) * d`.
pub(super) fn dequantize_q4_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (j, &q) in x[2..18].iter().enumerate() {
        y[j] = f32::from((q & 0x0F) as i8 - 8) * d;
        y[j + 16] = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// `block_q4_1 { half d; half m; u8 qs[16]; }`: `y = nibble * d + m`.
pub(super) fn dequantize_q4_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(x, 0), f16_at(x, 2));
    for (j, &q) in x[4..20].iter().enumerate() {
        y[j] = f32::from(q & 0x0F) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit values of a Q5_0/Q5_1 block: nibbles from `qs`, fifth bits from the 32-bit `qh`.
fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut v = [0u8; 32];
    for (j, &q) in qs.iter().enumerate() {
        v[j] = (q & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8);
        v[j + 16] = (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
    v
}

/// `block_q5_0 { half d; u8 qh[4]; u8 qs[16]; }`: `y = (q5 - 16) * d`.
pub(super) fn dequantize_q5_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (y, q) in y.iter_mut().zip(q5_values(&x[2..6], &x[6..22])) {
        *y = f32::from(q as i8 - 16) * d;
    }
}

/// `block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }`: `y = q5 * d + m`.
pub(super) fn dequantize_q5_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(x, 0), f16_at(x, 2));
    for (y, q) in y.iter_mut().zip(q5_values(&x[4..8], &x[8..24])) {
        *y = f32::from(q) * d + m;
    }
}
