//! FP8 (e4m3fn) weights on the GPU: matrices kept as a checkpoint stores them or quantized at
//! load (`quantization="fp8"`), and the two ways a projection reads them:
//!
//! - steps of 1-8 rows on sm_89+ (k a multiple of 64): the tensor-core FP8 GEMV
//!   (`kernels/cuda/gemv_fp8_mma.cu`); elsewhere one-row steps on the FP8 GEMV of
//!   `kernels/cuda/gemv.cu` (`*_fp8_m1`); either streams half the bytes of the bf16 one;
//! - larger steps: a GEMM (`fp8_gemm.rs`).

use super::device_mem::{self, DeviceMem};
use super::kernels::Fp8Layout;
use super::{CudaBackend, CudaMatrix};
use crate::error::Result;
use crate::weights::{Fp8Scales, Fp8Tensor};

/// The scales of an FP8 matrix on the device and their layout.
pub struct Fp8Weights {
    scales: DeviceMem,
    row_shift: i32,
    col_shift: i32,
    ld: i32,
}

impl Fp8Weights {
    /// Whether the matrix has one scale per row (what cuBLASLt's outer-vector scaling takes).
    pub(super) fn per_row(&self) -> bool {
        self.col_shift == 31 && self.row_shift == 0
    }
}

impl CudaMatrix {
    /// The layout of this matrix's scales, when it holds FP8 codes.
    pub(super) fn fp8_layout(&self) -> Option<Fp8Layout> {
        self.fp8.as_ref().map(|f| Fp8Layout {
            scales: f.scales.ptr,
            row_shift: f.row_shift,
            col_shift: f.col_shift,
            ld: f.ld,
        })
    }
}

/// Host-side scales of `parts` stacked along rows, in one layout: `(scales, row_shift,
/// col_shift, ld)`. `None` when the parts cannot share one (block sizes that differ or are not
/// powers of two ≥ 16 columns, a part whose rows end inside a block before another part).
fn stacked_scales(parts: &[Fp8Tensor<'_>]) -> Option<(Vec<f32>, i32, i32, i32)> {
    let cols = parts[0].shape[1];
    if parts
        .iter()
        .all(|p| !matches!(p.scales, Fp8Scales::Block { .. }))
    {
        let mut s = Vec::new();
        for p in parts {
            match &p.scales {
                Fp8Scales::Tensor(v) => s.extend(std::iter::repeat_n(*v, p.shape[0])),
                Fp8Scales::Channel(v) if v.len() == p.shape[0] => s.extend_from_slice(v),
                _ => return None,
            }
        }
        return Some((s, 0, 31, 1));
    }
    let Fp8Scales::Block { block, .. } = parts[0].scales else {
        return None;
    };
    let [br, bc] = block;
    if !br.is_power_of_two() || !bc.is_power_of_two() || bc < 16 {
        return None;
    }
    let ld = cols.div_ceil(bc);
    let mut s = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let Fp8Scales::Block { block: b, scales } = &p.scales else {
            return None;
        };
        let last = i + 1 == parts.len();
        if *b != block || (!last && p.shape[0] % br != 0) {
            return None;
        }
        if scales.len() != p.shape[0].div_ceil(br) * ld {
            return None;
        }
        s.extend_from_slice(scales);
    }
    let shift = |n: usize| n.trailing_zeros() as i32;
    Some((s, shift(br), shift(bc), ld as i32))
}

impl CudaBackend {
    /// An FP8 matrix of `parts` stacked along rows, codes copied from the file as they are.
    /// `None` where the kernels cannot read it as stored (see [`stacked_scales`]; columns not a
    /// multiple of 16); the caller then loads it dequantized.
    pub(super) fn fp8_matrix(&self, parts: &[Fp8Tensor<'_>]) -> Option<Result<CudaMatrix>> {
        let cols = parts.first()?.shape[1];
        if cols % 16 != 0 || parts.iter().any(|p| p.shape[1] != cols) {
            return None;
        }
        let (scales, row_shift, col_shift, ld) = stacked_scales(parts)?;
        let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
        Some((|| {
            let mem = self.weight_mem(rows * cols)?;
            let mut offset = 0u64;
            for p in parts {
                self.upload_at(mem.ptr + offset, p.bytes)?;
                offset += p.bytes.len() as u64;
            }
            let scales = self.weight_from_host(bytemuck::cast_slice(&scales))?;
            let w = Fp8Weights {
                scales,
                row_shift,
                col_shift,
                ld,
            };
            self.note_fp8(rows, cols, &w);
            Ok(CudaMatrix {
                mem,
                rows,
                cols,
                fp8: Some(w),
            })
        })())
    }

    /// `m` quantized to FP8 on the device, one scale per row (`quantization="fp8"`); `m` as it
    /// is when the option is off, it is FP8 already, or its columns are not a multiple of 16.
    pub(super) fn quantize_matrix(&self, m: CudaMatrix) -> Result<CudaMatrix> {
        if !self.opts.quantize_fp8 || m.fp8.is_some() || !m.cols.is_multiple_of(16) {
            return Ok(m);
        }
        let (rows, cols) = (m.rows, m.cols);
        let q = self.weight_mem(rows * cols)?;
        let scales = self.weight_mem(rows * 4)?;
        self.kernels()?.fp8_quantize_rows(
            &self.stream,
            m.mem.ptr,
            q.ptr,
            scales.ptr,
            rows,
            cols,
        )?;
        // `m`'s memory is freed in stream order, after the kernel has read it.
        drop(m);
        let w = Fp8Weights {
            scales,
            row_shift: 0,
            col_shift: 31,
            ld: 1,
        };
        self.note_fp8(rows, cols, &w);
        Ok(CudaMatrix {
            mem: q,
            rows,
            cols,
            fp8: Some(w),
        })
    }

    /// Copies `bytes` from the host to device address `dst` through the pinned staging.
    pub(super) fn upload_at(&self, dst: u64, bytes: &[u8]) -> Result<()> {
        let mut slot = self.uploader.borrow_mut();
        let uploader = match slot.as_mut() {
            Some(u) => u,
            None => slot.insert(device_mem::Uploader::new(&self.stream)?),
        };
        uploader.upload(&self.stream, dst, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(rows: usize, cols: usize, scales: Fp8Scales) -> Fp8Tensor<'static> {
        Fp8Tensor {
            shape: [rows, cols],
            bytes: &[],
            scales,
        }
    }

    #[test]
    fn per_tensor_and_per_channel_parts_stack_as_one_scale_per_row() {
        let parts = [
            part(2, 32, Fp8Scales::Tensor(0.5)),
            part(3, 32, Fp8Scales::Channel(vec![1.0, 2.0, 3.0])),
        ];
        let (s, r, c, ld) = stacked_scales(&parts).unwrap();
        assert_eq!(s, [0.5, 0.5, 1.0, 2.0, 3.0]);
        assert_eq!((r, c, ld), (0, 31, 1));
        // A channel vector of the wrong length is not taken.
        let bad = [part(2, 32, Fp8Scales::Channel(vec![1.0]))];
        assert!(stacked_scales(&bad).is_none());
    }

    #[test]
    fn block_parts_stack_when_every_part_but_the_last_ends_on_a_block() {
        let block = |rows: usize, cols: usize| {
            let n = rows.div_ceil(128) * cols.div_ceil(128);
            Fp8Scales::Block {
                block: [128, 128],
                scales: (0..n).map(|i| i as f32 + 1.0).collect(),
            }
        };
        let parts = [
            part(256, 300, block(256, 300)),
            part(130, 300, block(130, 300)),
        ];
        let (s, r, c, ld) = stacked_scales(&parts).unwrap();
        assert_eq!((r, c, ld), (7, 7, 3));
        assert_eq!(s.len(), 2 * 3 + 2 * 3);
        // A first part ending inside a block cannot share the layout.
        let parts = [
            part(130, 300, block(130, 300)),
            part(256, 300, block(256, 300)),
        ];
        assert!(stacked_scales(&parts).is_none());
        // Nor can block and per-channel parts, or blocks narrower than a 16-byte vector.
        let mixed = [
            part(128, 32, block(128, 32)),
            part(2, 32, Fp8Scales::Tensor(1.0)),
        ];
        assert!(stacked_scales(&mixed).is_none());
        let narrow = [part(
            8,
            32,
            Fp8Scales::Block {
                block: [8, 8],
                scales: vec![1.0; 4],
            },
        )];
        assert!(stacked_scales(&narrow).is_none());
    }
}
