//! The GEMM of an FP8 matrix in a step of more rows than the GEMV takes, in the way this GPU
//! offers ([`Fp8Gemm`], decided once when the steps are reserved):
//!
//! - on GPUs with FP8 tensor cores (sm_89+) and one scale per output row: the activations
//!   quantized per token (`fp8.cu`), then cuBLASLt's FP8 GEMM with both scale vectors applied in
//!   its epilogue (`gemm.rs`, outer-vector scaling) where cuBLASLt has it, else (Hopper) the GEMM
//!   of the raw codes into the output and `fp8_scale_out` applying the scales and the bias there;
//! - otherwise (Ampere, f16 models, or 128×128 block scales): the matrix dequantized into a
//!   scratch buffer and the dense GEMM. Correct everywhere, and on Hopper slower than bf16 for
//!   block-scaled checkpoints' prefill: cuBLASLt's 128×128 block mode is the next step there.

use std::cell::Cell;
use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::device_mem::DeviceMem;
use super::fp8::Fp8Weights;
use super::gemm::{ElemType, GemmShape};
use super::kernels::Kernels;
use super::{CudaBackend, CudaBuf, CudaMatrix, CudaVector};
use crate::error::Result;

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

impl CudaBackend {
    /// Whether the GEMM of `w` runs on FP8 tensor cores (else through a dequantized copy).
    fn fp8_tensor_cores(&self, w: &Fp8Weights) -> bool {
        self.fp8_gemm != Fp8Gemm::Dequantized && w.per_row()
    }

    /// Records what `w`'s GEMMs need of the scratch.
    pub(super) fn note_fp8(&self, rows: usize, cols: usize, w: &Fp8Weights) {
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
        let r = self.kernels().and_then(|k| {
            let scratch = &self.fp8_scratch;
            if !self.fp8_tensor_cores(f) {
                let deq = scratch.dequantized.as_ref().ok_or_else(scratch_missing)?;
                k.fp8_dequantize(stream, w.mem.ptr, layout, deq.ptr, w.rows, w.cols)?;
                let types = (self.elem_type(), out.dtype);
                let s = GemmShape::of(rows, (w.rows, w.cols), types, bias.is_some());
                let bias_ptr = bias.map(|b| b.mem.ptr);
                return self
                    .gemm
                    .run(s, x.mem.ptr, deq.ptr, bias_ptr, out.mem.ptr, stream);
            }
            let (act, act_scales) = scratch.act.as_ref().ok_or_else(scratch_missing)?;
            k.fp8_quantize_rows(stream, x.mem.ptr, act.ptr, act_scales.ptr, rows, w.cols)?;
            self.fp8_gemm_quantized(k, rows, w, bias, out, true)
        });
        self.record(r);
    }

    /// The GEMM of the FP8 matrix `w` (per-row scales, on tensor cores) of the activations in
    /// the scratch (codes and per-row scales, already written): `out = x · wᵀ (+ bias)`; with
    /// the raw codes' GEMM and `!scale`, the raw product is left in `out` for the caller's
    /// kernel to scale (no bias then).
    fn fp8_gemm_quantized(
        &self,
        k: &Kernels,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
        scale: bool,
    ) -> Result<()> {
        let layout = w.fp8_layout().ok_or_else(not_fp8)?;
        let (act, act_scales) = self.fp8_scratch.act.as_ref().ok_or_else(scratch_missing)?;
        let bias_ptr = bias.map(|b| b.mem.ptr);
        let output = out.dtype;
        let shape = |input, bias| GemmShape::of(rows, (w.rows, w.cols), (input, output), bias);
        if self.fp8_gemm == Fp8Gemm::OuterVector {
            let s = shape(ElemType::Fp8E4m3, bias.is_some());
            let scales = Some((layout.scales, act_scales.ptr));
            return self.gemm.run_scaled(
                s,
                act.ptr,
                w.mem.ptr,
                bias_ptr,
                scales,
                out.mem.ptr,
                &self.stream,
            );
        }
        let s = shape(ElemType::Fp8E4m3Raw, false);
        self.gemm
            .run(s, act.ptr, w.mem.ptr, None, out.mem.ptr, &self.stream)?;
        if !scale {
            return Ok(());
        }
        let (a_scales, w_scales) = (act_scales.ptr, layout.scales);
        k.fp8_scale_out(
            &self.stream,
            out.mem.ptr,
            a_scales,
            w_scales,
            bias_ptr,
            rows,
            w.rows,
        )
    }

    /// Whether a norm before `w` in a step of `rows` rows writes `w`'s FP8 GEMM input itself
    /// (`fp8_fused.cu`, `Tuning::fp8_fused`): `w` FP8 with per-row scales on tensor cores, in a
    /// step of more rows than the GEMV takes.
    pub(super) fn fp8_fuses_norm(&self, rows: usize, w: &CudaMatrix) -> bool {
        self.opts.tuning.fp8_fused
            && !self.use_gemv(rows, w)
            && w.fp8.as_ref().is_some_and(|f| self.fp8_tensor_cores(f))
    }

    /// The norm of `n` straight into the FP8 GEMM's scratch, as codes and per-row scales: bit
    /// for bit what the norm and `fp8_quantize_rows` of its output write.
    fn fp8_norm_into_scratch(&self, k: &Kernels, n: NormInput<'_>, rows: usize) -> Result<()> {
        let (act, act_scales) = self.fp8_scratch.act.as_ref().ok_or_else(scratch_missing)?;
        let (res, x) = match n.add {
            Some(add) => (Some(n.residual.mem.ptr), add.mem.ptr),
            None => (None, n.residual.mem.ptr),
        };
        let q = (act.ptr, act_scales.ptr);
        k.rms_norm_fp8(&self.stream, res, x, n.w.mem.ptr, q, rows, n.w.len, n.eps)
    }

    /// `norm_linear` where [`fp8_fuses_norm`](Self::fp8_fuses_norm): the norm writes the FP8
    /// input, then the GEMM.
    pub(super) fn fp8_norm_linear(
        &self,
        norm: NormInput<'_>,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
    ) {
        let r = self.kernels().and_then(|k| {
            self.fp8_norm_into_scratch(k, norm, rows)?;
            self.fp8_gemm_quantized(k, rows, w, bias, out, true)
        });
        self.record(r);
    }

    /// `norm_linear_silu_mul` where [`fp8_fuses_norm`](Self::fp8_fuses_norm): the norm writes
    /// the FP8 input, the GEMM writes `gate_up` (`rows × 2n`), and with the raw codes' GEMM
    /// `fp8_scale_silu_mul` scales it as it computes `act` (else it is scaled already, and
    /// `silu_mul` runs).
    pub(super) fn fp8_norm_linear_silu_mul(
        &self,
        norm: NormInput<'_>,
        (rows, n): (usize, usize),
        w: &CudaMatrix,
        gate_up: &mut CudaBuf,
        act: &mut CudaBuf,
    ) {
        let raw = self.fp8_gemm == Fp8Gemm::RawThenScale;
        let r = self.kernels().and_then(|k| {
            self.fp8_norm_into_scratch(k, norm, rows)?;
            self.fp8_gemm_quantized(k, rows, w, None, gate_up, !raw)?;
            if !raw {
                return k.silu_mul(&self.stream, gate_up.mem.ptr, act.mem.ptr, rows, n);
            }
            let layout = w.fp8_layout().ok_or_else(not_fp8)?;
            let (_, a_scales) = self.fp8_scratch.act.as_ref().ok_or_else(scratch_missing)?;
            let (g, o) = (gate_up.mem.ptr, act.mem.ptr);
            k.fp8_scale_silu_mul(&self.stream, g, a_scales.ptr, layout.scales, o, rows, n)
        });
        self.record(r);
    }
}

/// The norm in front of a projection (`Ops::norm_linear`): RMSNorm of `residual` with weight
/// `w`, after `residual += add` (stored) when `add` is given.
pub(super) struct NormInput<'a> {
    residual: &'a mut CudaBuf,
    add: Option<&'a CudaBuf>,
    w: &'a CudaVector,
    eps: f32,
}

impl<'a> NormInput<'a> {
    pub(super) fn new(
        residual: &'a mut CudaBuf,
        add: Option<&'a CudaBuf>,
        w: &'a CudaVector,
        eps: f32,
    ) -> NormInput<'a> {
        NormInput {
            residual,
            add,
            w,
            eps,
        }
    }
}

fn not_fp8() -> crate::error::Error {
    crate::error::Error::Engine("an FP8 GEMM of a matrix that is not FP8".into())
}

fn scratch_missing() -> crate::error::Error {
    crate::error::Error::Engine("an FP8 GEMM ran before the steps were reserved".into())
}
