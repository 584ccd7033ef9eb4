//! FP8 (e4m3fn) weights on the GPU: matrices kept as a checkpoint stores them or quantized at
//! load (`quantization="fp8"`), and the two ways a projection reads them:
//!
//! - one-row steps: the FP8 GEMV (`kernels/cuda/gemv.cu`, `*_fp8_m1`), which streams half the
//!   bytes of the bf16 one;
//! - larger steps, on GPUs with FP8 tensor cores (sm_89+) and one scale per output row: the
//!   activations quantized per token (`fp8.cu`), then cuBLASLt's FP8 GEMM with both scale
//!   vectors applied in its epilogue (`gemm.rs`, outer-vector scaling) where cuBLASLt has it,
//!   else (Hopper) the GEMM of the raw codes into the output and `fp8_scale_out` applying the
//!   scales and the bias there ([`Fp8Gemm`]);
//! - otherwise (Ampere, or 128×128 block scales): the matrix dequantized into a scratch buffer
//!   and the bf16 GEMM. Correct everywhere, and on Hopper slower than bf16 for block-scaled
//!   checkpoints' prefill: cuBLASLt's 128×128 block mode is the next step there.

use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::device_mem::{self, DeviceMem};
use super::gemm::{ElemType, GemmShape};
use super::kernels::Fp8Layout;
use super::{CudaBackend, CudaBuf, CudaMatrix, CudaVector};
use crate::error::Result;
use crate::weights::{Fp8Scales, Fp8Tensor};

/// How the GEMM of an FP8 matrix with one scale per row runs (decided once, when the steps are
/// reserved: [`CudaBackend::reserve_fp8`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Gemm {
    /// cuBLASLt's FP8 GEMM with both scale vectors in its epilogue.
    OuterVector,
    /// cuBLASLt's FP8 GEMM of the raw codes (scales 1) into the bf16 output, then
    /// `fp8_scale_out`: the per-token and per-channel scales and the bias, in place.
    RawThenScale,
    /// No FP8 tensor cores: a dequantized copy and the dense GEMM.
    Dequantized,
}

/// The scales of an FP8 matrix on the device and their layout.
pub struct Fp8Weights {
    scales: DeviceMem,
    row_shift: i32,
    col_shift: i32,
    ld: i32,
}

impl Fp8Weights {
    /// Whether the matrix has one scale per row (what cuBLASLt's outer-vector scaling takes).
    fn per_row(&self) -> bool {
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

/// What the FP8 GEMMs need of their scratch: the widest input, and the largest matrix read
/// through a dequantized copy. Grown as FP8 matrices are made; the buffers are made once, when
/// the steps are reserved.
#[derive(Default)]
pub struct Fp8Needs {
    max_k: Cell<usize>,
    max_dequantized: Cell<usize>,
    /// The largest FP8 matrix (rows × cols) and one shape of a per-row one, for the check
    /// that cuBLASLt takes FP8 with per-row scales on this GPU.
    max_any: Cell<usize>,
    per_row_shape: Cell<Option<(usize, usize)>>,
}

/// The scratch of the FP8 GEMMs (see [`Fp8Needs`]).
#[derive(Default)]
pub struct Fp8Scratch {
    /// `[rows, max_k]` e4m3 activations and their `[rows]` f32 scales.
    act: Option<(DeviceMem, DeviceMem)>,
    /// A dequantized matrix, in the activation dtype.
    dequantized: Option<DeviceMem>,
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
        if !self.opts.quantize_fp8 || m.fp8.is_some() || m.cols % 16 != 0 {
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

    /// Whether the GEMM of `w` runs on FP8 tensor cores (else through a dequantized copy).
    fn fp8_tensor_cores(&self, w: &Fp8Weights) -> bool {
        self.fp8_gemm != Fp8Gemm::Dequantized && w.per_row()
    }

    /// Records what `w`'s GEMMs need of the scratch.
    fn note_fp8(&self, rows: usize, cols: usize, w: &Fp8Weights) {
        let needs = &self.fp8_needs;
        needs.max_k.set(needs.max_k.get().max(cols));
        needs.max_any.set(needs.max_any.get().max(rows * cols));
        if w.per_row() {
            needs.per_row_shape.set(Some((rows, cols)));
        }
        if !self.fp8_tensor_cores(w) {
            let n = needs.max_dequantized.get().max(rows * cols);
            needs.max_dequantized.set(n);
        }
    }

    /// Makes the FP8 GEMMs' scratch for steps of up to `rows` rows; first decides how
    /// per-row-scaled matrices multiply on this GPU ([`Fp8Gemm`]).
    pub(super) fn reserve_fp8(&mut self, rows: usize) -> Result<()> {
        if let (Fp8Gemm::OuterVector, Some((n, k))) =
            (self.fp8_gemm, self.fp8_needs.per_row_shape.get())
        {
            self.fp8_gemm = self.fp8_gemm_mode(rows.min(16), n, k);
            if self.fp8_gemm == Fp8Gemm::Dequantized {
                let all = self.fp8_needs.max_any.get();
                self.fp8_needs.max_dequantized.set(all);
            }
        }
        let (k, deq) = (
            self.fp8_needs.max_k.get(),
            self.fp8_needs.max_dequantized.get(),
        );
        let s = &mut self.fp8_scratch;
        if k > 0 && self.fp8_gemm != Fp8Gemm::Dequantized {
            let big_enough = s.act.as_ref().is_some_and(|(a, _)| a.bytes() >= rows * k);
            if !big_enough {
                let act = DeviceMem::zeroed(&self.stream, rows * k)?;
                s.act = Some((act, DeviceMem::zeroed(&self.stream, rows * 4)?));
            }
        }
        if deq > 0 && s.dequantized.as_ref().is_none_or(|d| d.bytes() < deq * 2) {
            s.dequantized = Some(DeviceMem::zeroed(&self.stream, deq * 2)?);
        }
        Ok(())
    }

    /// The best FP8 GEMM cuBLASLt offers for an `[n, k]` matrix with per-row scales: with
    /// outer-vector scales (refused on Hopper by the cuBLASLt of CUDA 13.0), else raw codes
    /// into a bf16 output (an f16 output could overflow: |sum| reaches 448² · k), else none.
    fn fp8_gemm_mode(&self, rows: usize, n: usize, k: usize) -> Fp8Gemm {
        let shape = |input| GemmShape {
            rows,
            n,
            k,
            input,
            output: self.elem_type(),
            bias: false,
        };
        if self.gemm.supports(shape(ElemType::Fp8E4m3)) {
            return Fp8Gemm::OuterVector;
        }
        if self.elem_type() == ElemType::Bf16 && self.gemm.supports(shape(ElemType::Fp8E4m3Raw)) {
            tracing::info!(
                "cuBLASLt has no FP8 GEMM with per-row scales on this GPU: FP8 GEMMs run on the \
                 raw codes and a kernel applies the scales"
            );
            return Fp8Gemm::RawThenScale;
        }
        // Every FP8 matrix then goes through a dequantized copy (kernels/cuda/NOTES.md).
        tracing::warn!(
            "cuBLASLt has no FP8 GEMM for this GPU and dtype: FP8 matrices of more than one \
             row run through a dequantized copy"
        );
        Fp8Gemm::Dequantized
    }

    /// Enqueues `out = x · wᵀ (+ bias)` for an FP8 matrix `w` of more rows than the GEMV takes.
    pub(super) fn fp8_linear(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
    ) {
        let (Some(f), Some(layout)) = (w.fp8.as_ref(), w.fp8_layout()) else {
            return;
        };
        let stream: &Arc<CudaStream> = &self.stream;
        let bias_ptr = bias.map(|b| b.mem.ptr);
        if self.fp8_tensor_cores(f) {
            let r = self.kernels().and_then(|k| {
                let Some((act, act_scales)) = self.fp8_scratch.act.as_ref() else {
                    return Err(scratch_missing());
                };
                k.fp8_quantize_rows(stream, x.mem.ptr, act.ptr, act_scales.ptr, rows, w.cols)?;
                let raw = self.fp8_gemm == Fp8Gemm::RawThenScale;
                let shape = GemmShape {
                    rows,
                    n: w.rows,
                    k: w.cols,
                    input: if raw {
                        ElemType::Fp8E4m3Raw
                    } else {
                        ElemType::Fp8E4m3
                    },
                    output: out.dtype,
                    bias: bias.is_some() && !raw,
                };
                if !raw {
                    let scales = Some((layout.scales, act_scales.ptr));
                    return self.gemm.run_scaled(
                        shape,
                        act.ptr,
                        w.mem.ptr,
                        bias_ptr,
                        scales,
                        out.mem.ptr,
                        stream,
                    );
                }
                self.gemm
                    .run(shape, act.ptr, w.mem.ptr, None, out.mem.ptr, stream)?;
                k.fp8_scale_out(
                    stream,
                    out.mem.ptr,
                    act_scales.ptr,
                    layout.scales,
                    bias_ptr,
                    rows,
                    w.rows,
                )
            });
            return self.record(r);
        }
        let r = self.kernels().and_then(|k| {
            let Some(deq) = self.fp8_scratch.dequantized.as_ref() else {
                return Err(scratch_missing());
            };
            k.fp8_dequantize(stream, w.mem.ptr, layout, deq.ptr, w.rows, w.cols)?;
            let shape = GemmShape {
                rows,
                n: w.rows,
                k: w.cols,
                input: self.elem_type(),
                output: out.dtype,
                bias: bias.is_some(),
            };
            self.gemm
                .run(shape, x.mem.ptr, deq.ptr, bias_ptr, out.mem.ptr, stream)
        });
        self.record(r);
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

fn scratch_missing() -> crate::error::Error {
    crate::error::Error::Engine("an FP8 GEMM ran before the steps were reserved".into())
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
