//! The FP8 kernels around the GEMMs of FP8 matrices (`kernels/cuda/fp8.cu`,
//! `kernels/cuda/fp8_fused.cu`): quantization of rows, dequantization of a matrix, the scales
//! applied to a raw-code GEMM's output, and the norms and silu·mul fused with those steps.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::{launch_raw, param, Fp8Layout, Kernels};
use crate::error::Result;

impl Kernels {
    /// FP8 rows (`kernels/cuda/fp8.cu`): `q [rows, k]` e4m3 codes and `scales [rows]` f32 of
    /// `x [rows, k]` in the activation dtype, one scale per row; `k` a multiple of 8.
    pub fn fp8_quantize_rows(
        &self,
        stream: &Arc<CudaStream>,
        x: u64,
        q: u64,
        scales: u64,
        rows: usize,
        k: usize,
    ) -> Result<()> {
        let k = k as i32;
        launch!(self, stream, &self.fp8_quantize_rows, (rows, 1, 1), 256; x, q, scales, k)
    }

    /// `out [rows, cols]` in the activation dtype from FP8 codes `q` with the scales of
    /// `layout`; `cols` a multiple of 16.
    pub fn fp8_dequantize(
        &self,
        stream: &Arc<CudaStream>,
        q: u64,
        layout: Fp8Layout,
        out: u64,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let (scales, row_shift, col_shift, ld) =
            (layout.scales, layout.row_shift, layout.col_shift, layout.ld);
        let cols = cols as i32;
        launch!(self, stream, &self.fp8_dequantize, (rows, 1, 1), 256;
            q, scales, out, cols, row_shift, col_shift, ld)
    }

    /// `out [rows, n]` (activation dtype) times `a_scales [rows]` and `w_scales [n]` (f32),
    /// plus `bias [n]` when given, in place; `n` a multiple of 8.
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_scale_out(
        &self,
        stream: &Arc<CudaStream>,
        out: u64,
        a_scales: u64,
        w_scales: u64,
        bias: Option<u64>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let (bias, n) = (bias.unwrap_or(0), n as i32);
        launch!(self, stream, &self.fp8_scale_out, (rows, 1, 1), 256;
            out, a_scales, w_scales, bias, n)
    }

    /// [`rms_norm`](Self::rms_norm) of `x`, or with `residual` [`add_rms_norm`](Self::add_rms_norm)
    /// (`residual += x` stored, then the norm of it), its output quantized as
    /// [`fp8_quantize_rows`](Self::fp8_quantize_rows) quantizes it: `q [rows, hidden]` codes and
    /// `scales [rows]` (`kernels/cuda/fp8_fused.cu`, bit for bit the unfused pair).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_fp8(
        &self,
        stream: &Arc<CudaStream>,
        residual: Option<u64>,
        x: u64,
        w: u64,
        (q, scales): (u64, u64),
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let hidden = hidden as i32;
        let grid = (rows, 1, 1);
        match residual {
            Some(residual) => launch!(self, stream, &self.add_rms_norm_fp8, grid, 256;
                residual, x, w, q, scales, hidden, eps),
            None => launch!(self, stream, &self.rms_norm_fp8, grid, 256;
                x, w, q, scales, hidden, eps),
        }
    }

    /// [`fp8_scale_out`](Self::fp8_scale_out) of a fused gate/up projection's raw-code output
    /// `raw [rows, 2n]` (no bias) followed by [`silu_mul`](Self::silu_mul) into `out [rows, n]`,
    /// in one pass (`kernels/cuda/fp8_fused.cu`, bit for bit the unfused pair).
    #[allow(clippy::too_many_arguments)]
    pub fn fp8_scale_silu_mul(
        &self,
        stream: &Arc<CudaStream>,
        raw: u64,
        a_scales: u64,
        w_scales: u64,
        out: u64,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let grid = (n.div_ceil(8 * 256), rows, 1);
        let n = n as i32;
        launch!(self, stream, &self.fp8_scale_silu_mul, grid, 256;
            raw, a_scales, w_scales, out, n)
    }
}
