//! The ggml block formats a [`super::QuantMatrix`] keeps as they are, and the scalar
//! reference of their dot product with [`Q8Block`] activations.

use half::f16;

use super::kquant;
use super::q8::{Q8Block, RESIDUAL_STEPS};
use super::BLOCK;
use crate::weights::ggml_quants::GgmlType;

/// A ggml block format with integer dot-product kernels (32 weights per block, one f16 scale,
/// and for `Q4_1`/`Q5_1` an f16 minimum; or a k-quant super-block of 256; layouts of
/// ggml-common.h): every one has the AVX2 tile (`tile.rs`) and the scalar reference
/// [`QuantFormat::dot_scalar`].
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantFormat {
    /// `{ f16 d; u8 qs[16] }`: `w = (nibble − 8) · d`; low nibbles are elements 0..16.
    Q4_0,
    /// `{ f16 d; f16 m; u8 qs[16] }`: `w = nibble · d + m`.
    Q4_1,
    /// `{ f16 d; u8 qh[4]; u8 qs[16] }`: `w = (q5 − 16) · d`, the fifth bit of element `j`
    /// being bit `j` of `qh` (little-endian u32).
    Q5_0,
    /// `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`: `w = q5 · d + m`.
    Q5_1,
    /// `{ f16 d; i8 qs[32] }`: `w = q · d`.
    Q8_0,
    /// 256-element super-blocks of 8 sub-blocks with 6-bit scales and minimums (`kquant.rs`).
    Q4_K,
    /// `Q4_K` with a fifth bit per weight.
    Q5_K,
    /// 256-element super-blocks of 16 groups of 16 with 8-bit scales, 6-bit weights.
    Q6_K,
}

impl QuantFormat {
    /// Every format, for tests and error messages.
    pub const ALL: [QuantFormat; 8] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4_K,
        QuantFormat::Q5_K,
        QuantFormat::Q6_K,
    ];

    /// The formats the CPU backend keeps quantized (`device.rs`): those whose AVX2 tile beats
    /// the f32 layer per matrix at decode (`cpu_quant -- --formats`, NOTES.md): all of them.
    pub const KEPT: [QuantFormat; 8] = QuantFormat::ALL;

    /// The format of the ggml type `ty`, if it is one of these.
    pub fn from_ggml(ty: GgmlType) -> Option<QuantFormat> {
        QuantFormat::ALL.into_iter().find(|f| f.ggml() == ty)
    }

    /// The format of ggml type name `name` (`"Q4_1"`), if it is one of these.
    pub fn from_name(name: &str) -> Option<QuantFormat> {
        QuantFormat::ALL
            .into_iter()
            .find(|f| f.ggml().name() == name)
    }

    /// The ggml type.
    pub fn ggml(self) -> GgmlType {
        match self {
            QuantFormat::Q4_0 => GgmlType::Q4_0,
            QuantFormat::Q4_1 => GgmlType::Q4_1,
            QuantFormat::Q5_0 => GgmlType::Q5_0,
            QuantFormat::Q5_1 => GgmlType::Q5_1,
            QuantFormat::Q8_0 => GgmlType::Q8_0,
            QuantFormat::Q4_K => GgmlType::Q4_K,
            QuantFormat::Q5_K => GgmlType::Q5_K,
            QuantFormat::Q6_K => GgmlType::Q6_K,
        }
    }

    /// Bytes per block (of [`QuantFormat::block_elems`] weights).
    pub fn block_bytes(self) -> usize {
        self.ggml().type_size()
    }

    /// Weights per block: 32, or 256 for the k-quants' super-blocks.
    pub fn block_elems(self) -> usize {
        self.ggml().block_size()
    }

    /// Row `row`'s 32-element sub-blocks in order, each as [`QuantFormat::decode`] gives it.
    pub fn sub_blocks(self, row: &[u8]) -> impl Iterator<Item = ([i32; BLOCK], f32, f32)> + '_ {
        let per_block = self.block_elems() / BLOCK;
        row.chunks_exact(self.block_bytes())
            .flat_map(move |b| (0..per_block).map(move |s| self.decode(b, s)))
    }

    /// Sub-block `s` of block `b` (`s = 0` unless a k-quant) as integer codes, scale and
    /// minimum: `w[i] = codes[i] · d + m` (`m = 0` for the symmetric formats).
    pub fn decode(self, b: &[u8], s: usize) -> ([i32; BLOCK], f32, f32) {
        let f16_at = |at: usize| f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32();
        let mut codes = [0i32; BLOCK];
        let nibbles = |qs: &[u8], codes: &mut [i32; BLOCK], offset: i32| {
            for (j, &q) in qs.iter().enumerate() {
                codes[j] = i32::from(q & 0x0F) - offset;
                codes[j + 16] = i32::from(q >> 4) - offset;
            }
        };
        match self {
            QuantFormat::Q4_0 => {
                nibbles(&b[2..18], &mut codes, 8);
                (codes, f16_at(0), 0.0)
            }
            QuantFormat::Q4_1 => {
                nibbles(&b[4..20], &mut codes, 0);
                (codes, f16_at(0), f16_at(2))
            }
            QuantFormat::Q5_0 => {
                q5_codes(&b[2..6], &b[6..22], &mut codes, 16);
                (codes, f16_at(0), 0.0)
            }
            QuantFormat::Q5_1 => {
                q5_codes(&b[4..8], &b[8..24], &mut codes, 0);
                (codes, f16_at(0), f16_at(2))
            }
            QuantFormat::Q8_0 => {
                for (c, &q) in codes.iter_mut().zip(&b[2..34]) {
                    *c = i32::from(q as i8);
                }
                (codes, f16_at(0), 0.0)
            }
            QuantFormat::Q4_K => kquant::decode_q45_k(b, s, false),
            QuantFormat::Q5_K => kquant::decode_q45_k(b, s, true),
            QuantFormat::Q6_K => kquant::decode_q6_k(b, s),
        }
    }

    /// The reference dot product of one weight row (its blocks, in this format) with one row
    /// of activation blocks: `Σ_b d_w·d_a·(Σ codes·(254·qs + qs2)) + m_w·s_a` over the
    /// 32-element (sub-)blocks, each integer sum exact in i64 (the k-quants' codes carry their
    /// sub-block scale, up to 63·31 or 128·32), accumulated in f32 in block order.
    pub fn dot_scalar(self, w: &[u8], a: &[Q8Block]) -> f32 {
        let mut sum = 0.0f32;
        for ((codes, d, m), a) in self.sub_blocks(w).zip(a) {
            let idot: i64 = (0..BLOCK)
                .map(|i| {
                    let q = RESIDUAL_STEPS * i32::from(a.qs[i]) + i32::from(a.qs2[i]);
                    i64::from(codes[i]) * i64::from(q)
                })
                .sum();
            sum += d * a.d * idot as f32 + m * a.s;
        }
        sum
    }
}

/// The 5-bit codes of a Q5_0/Q5_1 block minus `offset`: nibbles from `qs` (low ones are
/// elements 0..16), the fifth bit of element `j` bit `j` of `qh` as a little-endian u32.
fn q5_codes(qh: &[u8], qs: &[u8], codes: &mut [i32; BLOCK], offset: i32) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (j, &q) in qs.iter().enumerate() {
        let high = |bit: usize| (((qh >> bit) & 1) << 4) as i32;
        codes[j] = i32::from(q & 0x0F) + high(j) - offset;
        codes[j + 16] = i32::from(q >> 4) + high(j + 16) - offset;
    }
}
