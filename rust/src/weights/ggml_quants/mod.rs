//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts follow ggml's `ggml-common.h` and each `dequantize_*` kernel performs the same
//! f32 operations in the same order as ggml's `dequantize_row_*` (no fused multiply-add), so the
//! results equal gguf-py's `gguf.quants.dequantize` bit for bit; the fixture test in `tests.rs`
//! checks that against files written by `tests/make_gguf_fixtures.py`.
//!
//! Files: the type table (`types.rs`), the 32-element block types (`legacy.rs`), the
//! 256-element k-quants (`k_quants.rs`); this file checks a buffer and runs a type's kernel
//! over its blocks in parallel.

use half::f16;
use rayon::prelude::*;

mod k_quants;
mod legacy;
mod types;

pub(crate) use k_quants::scale_min_k4;
use k_quants::{
    dequantize_q2_k, dequantize_q3_k, dequantize_q4_k, dequantize_q5_k, dequantize_q6_k,
};
use legacy::{dequantize_q4_0, dequantize_q4_1, dequantize_q5_0, dequantize_q5_1, dequantize_q8_0};
pub use types::{GgmlType, DEQUANTIZABLE};

/// Elements per rayon task: big enough that scheduling costs nothing next to the work, small
/// enough that a 576-wide embedding row still spreads over every core.
const ELEMENTS_PER_TASK: usize = 1 << 14;

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
    let mut out = vec![0.0f32; n_elements];
    dequantize_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into `y` (`y.len()` elements), without allocating.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], y: &mut [f32]) -> Result<(), DequantError> {
    let n_elements = y.len();
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
    Ok(())
}

/// Whether every block of `bytes` (a whole number of blocks of the block-quantized type `ty`)
/// has finite scales, hence finite values; `false` for a type without
/// [`GgmlType::scale_offsets`] or a partial block. Reads only the scales.
pub fn block_scales_finite(ty: GgmlType, bytes: &[u8]) -> bool {
    let Some(offsets) = ty.scale_offsets() else {
        return false;
    };
    let size = ty.type_size();
    bytes.len().is_multiple_of(size)
        && bytes
            .chunks_exact(size)
            .all(|b| offsets.iter().all(|&at| f16_at(b, at).is_finite()))
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

#[cfg(test)]
mod tests;
