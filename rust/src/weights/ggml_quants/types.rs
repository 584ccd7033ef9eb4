//! The ggml tensor types: ids, names and block sizes from one table, and which of them
//! [`super::dequantize`] reads.

/// Elements per super-block of the k-quants (`QK_K` in ggml).
const QK_K: usize = 256;

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
    /// Byte offsets, within one block, of the f16 scales (and mins) of a block-quantized type
    /// that [`dequantize`] reads (ggml-common.h); `None` for the dense types (F32, F16, BF16)
    /// and the types it does not read. Every other byte of such a block is an integer code, so
    /// a block's values are finite exactly when these scales are.
    pub fn scale_offsets(self) -> Option<&'static [usize]> {
        Some(match self {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            // scales[16], qs[64], then d and dmin.
            GgmlType::Q2_K => &[80, 82],
            // hmask[32], qs[64], scales[12], then d.
            GgmlType::Q3_K => &[108],
            // ql[128], qh[64], scales[16], then d.
            GgmlType::Q6_K => &[208],
            _ => return None,
        })
    }

    /// Whether [`dequantize`] supports this type.
    pub fn can_dequantize(self) -> bool {
        DEQUANTIZABLE.contains(&self)
    }

    /// Bytes taken by `n_elements` elements of this type, or `None` when `n_elements` is not a
    /// whole number of blocks or the size overflows `usize`.
    pub fn byte_size(self, n_elements: usize) -> Option<usize> {
        if !n_elements.is_multiple_of(self.block_size()) {
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
