//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts follow ggml's `ggml-common.h` and each `dequantize_*` below performs the same
//! f32 operations in the same order as ggml's `dequantize_row_*` (no fused multiply-add), so the
//! results equal gguf-py's `gguf.quants.dequantize` bit for bit; the fixture test at the bottom
//! checks that against files written by `tests/make_gguf_fixtures.py`.

use half::f16;
use rayon::prelude::*;

/// Elements per super-block of the k-quants (`QK_K` in ggml).
const QK_K: usize = 256;

/// Elements per rayon task: big enough that scheduling costs nothing next to the work, small
/// enough that a 576-wide embedding row still spreads over every core.
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// Defines [`GgmlType`] and its id / name / size tables from one list, so they cannot disagree.
macro_rules! ggml_types {
    ($($name:ident = $id:literal, $block:expr, $size:expr;)*) => {
        /// A ggml tensor type as numbered in `ggml.h` (the `type` field of a GGUF tensor info).
        ///
        /// Every type ggml defines is listed so that a file's tensor sizes can be checked and an
        /// error can name the type; [`GgmlType::can_dequantize`] says which ones this module reads.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $(#[doc = concat!("ggml's `GGML_TYPE_", stringify!($name), "` (id ", $id, ").")]
            $name,)*
        }

        impl GgmlType {
            /// The type with ggml id `id`, or `None` for an id ggml does not (or no longer) define.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$name),)*
                    _ => None,
                }
            }

            /// The ggml id of this type.
            pub fn id(self) -> u32 {
                match self {
                    $(GgmlType::$name => $id,)*
                }
            }

            /// ggml's name of this type (`"Q4_K"`).
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$name => stringify!($name),)*
                }
            }

            /// Elements per block; a tensor's innermost dimension is a multiple of it.
            pub fn block_size(self) -> usize {
                match self {
                    $(GgmlType::$name => $block,)*
                }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self {
                    $(GgmlType::$name => $size,)*
                }
            }
        }
    };
}

// Sizes from ggml-common.h, as listed in gguf-py's GGML_QUANT_SIZES.
ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 2 + 16;
    Q4_1 = 3, 32, 2 + 2 + 16;
    Q5_0 = 6, 32, 2 + 4 + 16;
    Q5_1 = 7, 32, 2 + 2 + 4 + 16;
    Q8_0 = 8, 32, 2 + 32;
    Q8_1 = 9, 32, 4 + 4 + 32;
    Q2_K = 10, QK_K, 2 + 2 + QK_K / 16 + QK_K / 4;
    Q3_K = 11, QK_K, 2 + QK_K / 4 + QK_K / 8 + 12;
    Q4_K = 12, QK_K, 2 + 2 + QK_K / 2 + 12;
    Q5_K = 13, QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12;
    Q6_K = 14, QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16;
    Q8_K = 15, QK_K, 4 + QK_K + QK_K / 8;
    IQ2_XXS = 16, QK_K, 2 + QK_K / 4;
    IQ2_XS = 17, QK_K, 2 + QK_K / 4 + QK_K / 32;
    IQ3_XXS = 18, QK_K, 2 + QK_K / 4 + QK_K / 8;
    IQ1_S = 19, QK_K, 2 + QK_K / 8 + QK_K / 16;
    IQ4_NL = 20, 32, 2 + 16;
    IQ3_S = 21, QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4;
    IQ2_S = 22, QK_K, 2 + QK_K / 4 + QK_K / 16;
    IQ4_XS = 23, QK_K, 2 + 2 + QK_K / 2 + QK_K / 64;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, QK_K, 2 + 4 * 13;
    TQ2_0 = 35, QK_K, 2 + 64;
    MXFP4 = 39, 32, 1 + 16;
    NVFP4 = 40, 64, 4 + 32;
    Q1_0 = 41, 128, 2 + 16;
}

/// The types [`dequantize`] reads, in the order error messages list them.
pub const DEQUANTIZABLE: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

impl GgmlType {
    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        DEQUANTIZABLE.contains(&self)
    }

    /// Bytes taken by `n_elements` elements of this type, or `None` when `n_elements` is not a
    /// whole number of blocks or the size overflows `usize`.
    pub fn byte_size(self, n_elements: usize) -> Option<usize> {
        if n_elements % self.block_size() != 0 {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// A ggml type this module has no kernel for.
    #[error("ggml type {0} cannot be dequantized (supported: {list})", list = supported_list())]
    UnsupportedType(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error(
        "{n_elements} elements of {ty} are not a whole number of {block}-element blocks",
        block = ty.block_size()
    )]
    PartialBlock {
        /// The type asked for.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
    },
    /// The buffer does not hold exactly `n_elements` elements.
    #[error("{n_elements} elements of {ty} take {expected} bytes, got {actual}")]
    ByteLength {
        /// The type asked for.
        ty: GgmlType,
        /// The element count asked for.
        n_elements: usize,
        /// Bytes that many elements take.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

/// The names of [`DEQUANTIZABLE`], comma-separated, for error messages.
fn supported_list() -> String {
    DEQUANTIZABLE
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Dequantizes `n_elements` elements of type `ty` stored in `bytes` (exactly
/// `ty.byte_size(n_elements)` bytes) into f32, in storage order. Runs in parallel over blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, DequantError> {
    if !ty.can_dequantize() {
        return Err(DequantError::UnsupportedType(ty));
    }
    let expected = ty
        .byte_size(n_elements)
        .ok_or(DequantError::PartialBlock { ty, n_elements })?;
    if bytes.len() != expected {
        return Err(DequantError::ByteLength {
            ty,
            n_elements,
            expected,
            actual: bytes.len(),
        });
    }
    let mut out = vec![0.0f32; n_elements];
    let y = &mut out;
    match ty {
        GgmlType::F32 => for_each_block(ty, bytes, y, |b, y| {
            y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }),
        GgmlType::F16 => for_each_block(ty, bytes, y, |b, y| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => for_each_block(ty, bytes, y, |b, y| {
            y[0] = f32::from_bits(u32::from(le_u16(b, 0)) << 16)
        }),
        GgmlType::Q8_0 => for_each_block(ty, bytes, y, dequantize_q8_0),
        GgmlType::Q4_0 => for_each_block(ty, bytes, y, dequantize_q4_0),
        GgmlType::Q4_1 => for_each_block(ty, bytes, y, dequantize_q4_1),
        GgmlType::Q5_0 => for_each_block(ty, bytes, y, dequantize_q5_0),
        GgmlType::Q5_1 => for_each_block(ty, bytes, y, dequantize_q5_1),
        GgmlType::Q2_K => for_each_block(ty, bytes, y, dequantize_q2_k),
        GgmlType::Q3_K => for_each_block(ty, bytes, y, dequantize_q3_k),
        GgmlType::Q4_K => for_each_block(ty, bytes, y, dequantize_q4_k),
        GgmlType::Q5_K => for_each_block(ty, bytes, y, dequantize_q5_k),
        GgmlType::Q6_K => for_each_block(ty, bytes, y, dequantize_q6_k),
        _ => return Err(DequantError::UnsupportedType(ty)),
    }
    Ok(out)
}

/// Runs `kernel` on every (block bytes, block output) pair, in parallel over groups of blocks.
/// Generic over the kernel so that each type's loop is compiled with its kernel inlined.
/// Requires `x.len() == y.len() / block_size * type_size` (checked by [`dequantize`]).
fn for_each_block<K>(ty: GgmlType, x: &[u8], y: &mut [f32], kernel: K)
where
    K: Fn(&[u8], &mut [f32]) + Sync,
{
    let (block, size) = (ty.block_size(), ty.type_size());
    let blocks_per_task = (ELEMENTS_PER_TASK / block).max(1);
    y.par_chunks_mut(blocks_per_task * block)
        .zip(x.par_chunks(blocks_per_task * size))
        .for_each(|(ys, xs)| {
            for (y, x) in ys.chunks_exact_mut(block).zip(xs.chunks_exact(size)) {
                kernel(x, y);
            }
        });
}

/// The little-endian u16 at byte `at` of `b`.
fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The little-endian f16 at byte `at` of `b`, widened (exactly) to f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(le_u16(b, at)).to_f32()
}

/// `block_q8_0 { half d; int8 qs[32]; }`: `y = q * d`.
fn dequantize_q8_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (y, &q) in y.iter_mut().zip(&x[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_q4_0 { half d; u8 qs[16]; }`: low nibbles are elements 0..16, high nibbles 16..32;
/// `y = (nibble - 8) * d`.
fn dequantize_q4_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (j, &q) in x[2..18].iter().enumerate() {
        y[j] = f32::from((q & 0x0F) as i8 - 8) * d;
        y[j + 16] = f32::from((q >> 4) as i8 - 8) * d;
    }
}

/// `block_q4_1 { half d; half m; u8 qs[16]; }`: `y = nibble * d + m`.
fn dequantize_q4_1(x: &[u8], y: &mut [f32]) {
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
fn dequantize_q5_0(x: &[u8], y: &mut [f32]) {
    let d = f16_at(x, 0);
    for (y, q) in y.iter_mut().zip(q5_values(&x[2..6], &x[6..22])) {
        *y = f32::from(q as i8 - 16) * d;
    }
}

/// `block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }`: `y = q5 * d + m`.
fn dequantize_q5_1(x: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(x, 0), f16_at(x, 2));
    for (y, q) in y.iter_mut().zip(q5_values(&x[4..8], &x[8..24])) {
        *y = f32::from(q) * d + m;
    }
}

/// `block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin; }`: 16 groups of 16 with a 4-bit
/// scale and a 4-bit min each; `y = d * scale * q2 - dmin * min`.
fn dequantize_q2_k(x: &[u8], y: &mut [f32]) {
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
fn dequantize_q3_k(x: &[u8], y: &mut [f32]) {
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
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
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
fn dequantize_q4_k(x: &[u8], y: &mut [f32]) {
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
fn dequantize_q5_k(x: &[u8], y: &mut [f32]) {
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
fn dequantize_q6_k(x: &[u8], y: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn type_table_round_trips_ids() {
        for id in 0..64 {
            if let Some(ty) = GgmlType::from_id(id) {
                assert_eq!(ty.id(), id);
            }
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::Q4_K.type_size(), 144);
        assert_eq!(GgmlType::Q6_K.type_size(), 210);
        assert_eq!(GgmlType::Q6_K.byte_size(512), Some(420));
        assert_eq!(GgmlType::Q6_K.byte_size(100), None);
    }

    #[test]
    fn scalar_types() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(GgmlType::F32, &f32s, 2).unwrap(),
            vec![1.5, -2.0]
        );
        let f16s = [h(0.5), h(-65504.0)].concat();
        assert_eq!(
            dequantize(GgmlType::F16, &f16s, 2).unwrap(),
            vec![0.5, -65504.0]
        );
        // bf16 is the high half of an f32: 0x3FC0 = 1.5, 0xC2F7 = -123.5.
        let bf16s = [0xC0, 0x3F, 0xF7, 0xC2];
        assert_eq!(
            dequantize(GgmlType::BF16, &bf16s, 2).unwrap(),
            vec![1.5, -123.5]
        );
    }

    #[test]
    fn q8_0_block() {
        let mut block = h(0.5).to_vec();
        block.extend((0..32).map(|i: i32| (i * 8 - 128) as i8 as u8));
        let y = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 * 8.0 - 128.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_and_q4_1_blocks_put_low_nibbles_first() {
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let y = dequantize(GgmlType::Q4_0, &[&h(2.0)[..], &qs].concat(), 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 2.0);
        }
        let y = dequantize(GgmlType::Q4_1, &[&h(0.25)[..], &h(-1.0), &qs].concat(), 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    /// Packs eight 6-bit scales and mins as the Q4_K/Q5_K layout documents (gguf-py's diagram):
    /// bytes 0..4 hold scales 0..4 plus the top 2 bits of scales 4..8, bytes 4..8 the same for
    /// mins, bytes 8..12 the low nibbles of scales 4..8 (low) and mins 4..8 (high).
    fn pack_k4_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut p = [0u8; 12];
        for i in 0..4 {
            p[i] = sc[i] | ((sc[i + 4] >> 4) << 6);
            p[i + 4] = m[i] | ((m[i + 4] >> 4) << 6);
            p[i + 8] = (sc[i + 4] & 0x0F) | ((m[i + 4] & 0x0F) << 4);
        }
        p
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 63, 17, 33, 48, 5];
        let m = [0, 9, 62, 4, 50, 1, 31, 63];
        let q: Vec<u8> = (0..256).map(|e| (e * 7 % 16) as u8).collect();
        let mut qs = [0u8; 128];
        for (e, &qe) in q.iter().enumerate() {
            let (chunk, within) = (e / 64, e % 64);
            qs[chunk * 32 + within % 32] |= qe << (4 * (within / 32));
        }
        let (d, dmin) = (0.125f32, 0.5f32);
        let block = [&h(d)[..], &h(dmin), &pack_k4_scales(sc, m), &qs].concat();
        let y = dequantize(GgmlType::Q4_K, &block, 256).unwrap();
        for e in 0..256 {
            let sub = e / 32;
            let want = d * f32::from(sc[sub]) * f32::from(q[e]) - dmin * f32::from(m[sub]);
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn q6_k_block() {
        let q: Vec<i8> = (0..256).map(|e| (e * 13 % 64) as i8 - 32).collect();
        let scales: Vec<i8> = (0..16).map(|i: i32| (i * 9 - 70) as i8).collect();
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for (e, &qe) in q.iter().enumerate() {
            let (n, quarter, l) = (e / 128, e % 128 / 32, e % 32);
            let v = (qe + 32) as u8;
            ql[n * 64 + (quarter % 2) * 32 + l] |= (v & 0x0F) << (4 * (quarter / 2));
            qh[n * 32 + l] |= (v >> 4) << (2 * quarter);
        }
        let d = 0.01f32;
        let sc_bytes: Vec<u8> = scales.iter().map(|&s| s as u8).collect();
        let block = [&ql[..], &qh, &sc_bytes, &h(d)].concat();
        let y = dequantize(GgmlType::Q6_K, &block, 256).unwrap();
        let d = f16::from_f32(d).to_f32();
        for e in 0..256 {
            let want = d * f32::from(scales[e / 16]) * f32::from(q[e]);
            assert_eq!(y[e], want, "element {e}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let err = dequantize(GgmlType::IQ2_XXS, &[0; 66], 256).unwrap_err();
        assert!(
            err.to_string().contains("IQ2_XXS cannot be dequantized"),
            "{err}"
        );
        assert!(matches!(
            dequantize(GgmlType::Q4_0, &[0; 18], 31),
            Err(DequantError::PartialBlock { .. })
        ));
        assert_eq!(
            dequantize(GgmlType::Q4_0, &[0; 17], 32),
            Err(DequantError::ByteLength {
                ty: GgmlType::Q4_0,
                n_elements: 32,
                expected: 18,
                actual: 17
            })
        );
        assert_eq!(dequantize(GgmlType::Q6_K, &[], 0), Ok(vec![]));
    }

    /// Compares with gguf-py's numpy dequantization, written by `tests/make_gguf_fixtures.py`.
    /// Both compute the same f32 operations in the same order, so the match is exact (bitwise).
    #[test]
    fn matches_gguf_py_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for ty in DEQUANTIZABLE {
            let path = dir.join(format!("dequant_{}.bin", ty.name()));
            let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(&file[..8], b"GGMLFIX1");
            let word =
                |i: usize| u32::from_le_bytes(file[8 + 4 * i..12 + 4 * i].try_into().unwrap());
            let (id, n, n_bytes) = (word(0), word(1) as usize, word(2) as usize);
            assert_eq!(GgmlType::from_id(id), Some(*ty));
            let raw = &file[20..20 + n_bytes];
            let expected: Vec<f32> = file[20 + n_bytes..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(expected.len(), n);
            let got = dequantize(*ty, raw, n).unwrap();
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "{ty} element {i}: {g} != {e}");
            }
        }
    }
}
