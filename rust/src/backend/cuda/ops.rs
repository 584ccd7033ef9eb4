//! The forward pass's operations on the GPU: each enqueues a kernel or a cuBLASLt GEMM on the
//! backend's stream and returns at once; failures are kept for the next wait. The operations
//! read the step's batch from its device copy (`StepMeta`), uploaded when the step began.

use super::fp8_gemm::NormInput;
use super::gemm::GemmShape;
use super::kernels::{fp8_mma_fits, GemvArgs, GemvInput, GemvOutput};
use super::{CudaBackend, CudaBuf, CudaKvCache, CudaMatrix, CudaVector};
use crate::backend::cuda::gemm::ElemType;
use crate::backend::{AttentionShape, ForwardBatch, Ops, Residual};

impl CudaBackend {
    /// Whether a projection of `rows` rows through `w` runs on the GEMV kernels: one row, or
    /// up to 8 for an FP8 matrix the tensor-core FP8 GEMV takes (sm_89+).
    pub(super) fn use_gemv(&self, rows: usize, w: &CudaMatrix) -> bool {
        let max_rows = match w.fp8_layout() {
            Some(l) if fp8_mma_fits(w.cols, &l) => self.fp8_gemv_max_rows,
            _ => self.gemv_max_rows,
        };
        (1..=max_rows).contains(&rows) && w.cols.is_multiple_of(8)
    }

    /// The GEMV output kind that writes `out`'s dtype.
    fn gemv_output(out: &CudaBuf) -> GemvOutput {
        if out.dtype == ElemType::F32 {
            GemvOutput::F32
        } else {
            GemvOutput::Store
        }
    }

    /// Enqueues one GEMV (see `kernels/cuda/gemv.cu`): `out` = `input`-read `x` times `w`ᵀ,
    /// stored, stored as f32 or added as `output` says.
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        &self,
        input: GemvInput,
        output: GemvOutput,
        rows: usize,
        w: &CudaMatrix,
        x: &CudaBuf,
        norm_w: Option<&CudaVector>,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
        eps: f32,
    ) {
        debug_assert!(
            !matches!(output, GemvOutput::Add | GemvOutput::Silu) || bias.is_none(),
            "gemv.cu's add and silu take no bias"
        );
        let out_width = if output == GemvOutput::Silu {
            w.rows / 2
        } else {
            w.rows
        };
        debug_assert!(rows * w.cols <= x.len && rows * out_width <= out.len);
        let args = GemvArgs {
            input,
            output,
            rows,
            w: w.mem.ptr,
            fp8: w.fp8_layout(),
            n: w.rows,
            k: w.cols,
            x: x.mem.ptr,
            norm_w: norm_w.map_or(0, |v| v.mem.ptr),
            bias: bias.map_or(0, |v| v.mem.ptr),
            out: out.mem.ptr,
            eps,
        };
        self.enqueue(|k| k.gemv(&self.stream, &args, self.sm_count));
    }
}

impl Ops for CudaBackend {
    type Buf = CudaBuf;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type KvCache = CudaKvCache;

    fn embedding(&self, table: &CudaMatrix, _ids: &[u32], out: &mut CudaBuf) {
        self.enqueue(|k| {
            k.embedding(
                &self.stream,
                table.mem.ptr,
                self.meta.token_ids(),
                out.mem.ptr,
                self.meta.rows,
                table.cols,
            )
        });
    }

    fn rms_norm(&self, x: &CudaBuf, w: &CudaVector, eps: f32, rows: usize, out: &mut CudaBuf) {
        self.enqueue(|k| {
            k.rms_norm(
                &self.stream,
                x.mem.ptr,
                w.mem.ptr,
                out.mem.ptr,
                rows,
                w.len,
                eps,
            )
        });
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaVector,
        eps: f32,
        rows: usize,
        out: &mut CudaBuf,
    ) {
        self.enqueue(|k| {
            k.add_rms_norm(
                &self.stream,
                residual.mem.ptr,
                x.mem.ptr,
                w.mem.ptr,
                out.mem.ptr,
                rows,
                w.len,
                eps,
            )
        });
    }

    fn linear(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaBuf,
    ) {
        debug_assert!(rows * w.cols <= x.len && rows * w.rows <= out.len);
        if self.use_gemv(rows, w) {
            let output = Self::gemv_output(out);
            return self.gemv(GemvInput::Plain, output, rows, w, x, None, bias, out, 0.0);
        }
        if w.fp8.is_some() {
            return self.fp8_linear(x, rows, w, bias, out);
        }
        let types = (self.elem_type(), out.dtype);
        let shape = GemmShape::of(rows, (w.rows, w.cols), types, bias.is_some());
        self.enqueue(|_| {
            self.gemm.run(
                shape,
                x.mem.ptr,
                w.mem.ptr,
                bias.map(|b| b.mem.ptr),
                out.mem.ptr,
                &self.stream,
            )
        });
    }

    fn norm_linear(
        &self,
        residual: &mut CudaBuf,
        add: Option<&CudaBuf>,
        norm_w: &CudaVector,
        eps: f32,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        normed: &mut CudaBuf,
        out: &mut CudaBuf,
    ) {
        if add.is_some() || !self.use_gemv(rows, w) {
            if self.fp8_fuses_norm(rows, w) {
                let norm = NormInput::new(residual, add, norm_w, eps);
                return self.fp8_norm_linear(norm, rows, w, bias, out);
            }
            match add {
                Some(x) => self.add_rms_norm(residual, x, norm_w, eps, rows, normed),
                None => self.rms_norm(residual, norm_w, eps, rows, normed),
            }
            return self.linear(normed, rows, w, bias, out);
        }
        let output = Self::gemv_output(out);
        let norm = Some(norm_w);
        self.gemv(
            GemvInput::Norm,
            output,
            rows,
            w,
            residual,
            norm,
            bias,
            out,
            eps,
        );
    }

    fn linear_residual(
        &self,
        x: &CudaBuf,
        rows: usize,
        w: &CudaMatrix,
        residual: &mut CudaBuf,
        out: &mut CudaBuf,
    ) -> Residual {
        if !self.use_gemv(rows, w) {
            self.linear(x, rows, w, None, out);
            return Residual::Pending;
        }
        self.gemv(
            GemvInput::Plain,
            GemvOutput::Add,
            rows,
            w,
            x,
            None,
            None,
            residual,
            0.0,
        );
        Residual::Added
    }

    fn norm_linear_silu_mul(
        &self,
        residual: &mut CudaBuf,
        add: Option<&CudaBuf>,
        norm_w: &CudaVector,
        eps: f32,
        rows: usize,
        n: usize,
        w: &CudaMatrix,
        normed: &mut CudaBuf,
        gate_up: &mut CudaBuf,
        act: &mut CudaBuf,
    ) {
        if add.is_some() || !self.use_gemv(rows, w) || !w.rows.is_multiple_of(4) {
            if self.fp8_fuses_norm(rows, w) {
                let norm = NormInput::new(residual, add, norm_w, eps);
                return self.fp8_norm_linear_silu_mul(norm, (rows, n), w, gate_up, act);
            }
            self.norm_linear(residual, add, norm_w, eps, rows, w, None, normed, gate_up);
            return self.silu_mul(gate_up, rows, n, act);
        }
        debug_assert_eq!(2 * n, w.rows);
        let (input, output, norm) = (GemvInput::Norm, GemvOutput::Silu, Some(norm_w));
        self.gemv(input, output, rows, w, residual, norm, None, act, eps);
    }

    fn qk_norm(
        &self,
        qkv: &mut CudaBuf,
        rows: usize,
        shape: AttentionShape,
        q_w: &CudaVector,
        k_w: &CudaVector,
        eps: f32,
    ) {
        self.enqueue(|k| {
            k.qk_norm(
                &self.stream,
                qkv.mem.ptr,
                q_w.mem.ptr,
                k_w.mem.ptr,
                rows,
                shape,
                eps,
            )
        });
    }

    fn rope_and_cache_write(
        &self,
        qkv: &mut CudaBuf,
        _batch: &ForwardBatch,
        inv_freq: &[f32],
        shape: AttentionShape,
        cache: &mut CudaKvCache,
        layer: usize,
    ) {
        self.enqueue(|k| {
            k.rope_cache_write(
                &self.stream,
                qkv.mem.ptr,
                &self.meta,
                self.inv_freq_ptr(inv_freq)?,
                cache.k_ptr(layer),
                cache.v_ptr(layer),
                cache.scales(layer),
                shape,
            )
        });
    }

    fn attention(
        &self,
        qkv: &CudaBuf,
        _batch: &ForwardBatch,
        shape: AttentionShape,
        cache: &CudaKvCache,
        layer: usize,
        out: &mut CudaBuf,
    ) {
        self.enqueue(|k| {
            k.attention(
                &self.stream,
                qkv.mem.ptr,
                (cache.k_ptr(layer), cache.v_ptr(layer)),
                cache.scales(layer),
                out.mem.ptr,
                &self.meta,
                shape,
                &self.plan.buffers(self.meta.max_blocks),
            )
        });
    }

    fn silu_mul(&self, x: &CudaBuf, rows: usize, n: usize, out: &mut CudaBuf) {
        self.enqueue(|k| k.silu_mul(&self.stream, x.mem.ptr, out.mem.ptr, rows, n));
    }

    fn gather_rows(&self, x: &CudaBuf, rows: &[u32], width: usize, out: &mut CudaBuf) {
        debug_assert_eq!(rows.len(), self.meta.num_logits);
        self.enqueue(|k| {
            k.gather_rows(
                &self.stream,
                x.mem.ptr,
                self.meta.logits_rows(),
                out.mem.ptr,
                rows.len(),
                width,
            )
        });
    }
}
