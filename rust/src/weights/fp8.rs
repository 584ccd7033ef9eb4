//! FP8 weights as checkpoints store them: the e4m3fn codec (OCP 8-bit floating point, the
//! `float8_e4m3fn` of PyTorch and safetensors' `F8_E4M3`), the layout of their scales, their
//! dequantization to f32, and the per-layer KV-cache scales some FP8 checkpoints carry.
//!
//! e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal
//! (`m * 2^-9`); there is no infinity, and only `S.1111.111` (0x7f, 0xff) is NaN, so the
//! largest magnitude is `S.1111.110` = 448. A weight's value is its code's value times the
//! scale of its place ([`Fp8Scales`]).
//!
//! Activation scales (`input_scale`, written by checkpoints with static activation
//! quantization) are not read: the engine quantizes activations with dynamic per-token scales
//! at run time, whatever the checkpoint was calibrated with.

use std::sync::LazyLock;

use rayon::prelude::*;

use super::{Fp8Scales, Fp8Tensor, WeightSource};
use crate::config::Fp8ScaleLayout;
use crate::error::{Error, Result};

/// Rows dequantized per rayon task.
const ROWS_PER_TASK: usize = 16;
/// Bytes scanned for NaN codes per rayon task.
const BYTES_PER_TASK: usize = 1 << 20;

/// The value of every e4m3fn code.
static E4M3: LazyLock<[f32; 256]> = LazyLock::new(|| std::array::from_fn(|c| decode(c as u8)));

fn decode(code: u8) -> f32 {
    if is_nan_code(code) {
        return f32::NAN;
    }
    let exponent = i32::from((code >> 3) & 0x0f);
    let mantissa = f32::from(code & 0x07);
    let magnitude = if exponent == 0 {
        mantissa * (-9f32).exp2()
    } else {
        (8.0 + mantissa) * ((exponent - 10) as f32).exp2()
    };
    if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The value of an e4m3fn code (NaN for 0x7f and 0xff).
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3[usize::from(code)]
}

/// Whether `code` is e4m3fn's NaN (0x7f or 0xff).
pub fn is_nan_code(code: u8) -> bool {
    code & 0x7f == 0x7f
}

/// The flat index of the first NaN code in `codes`, if any. Every byte is looked at (in
/// parallel): the scan is memory-bound and touches pages the upload reads next anyway.
pub fn find_nan_code(codes: &[u8]) -> Option<usize> {
    codes
        .par_chunks(BYTES_PER_TASK)
        .enumerate()
        .find_first(|(_, c)| c.iter().any(|&b| is_nan_code(b)))
        .and_then(|(i, c)| Some(i * BYTES_PER_TASK + c.iter().position(|&b| is_nan_code(b))?))
}

/// The scales of a `[rows, cols]` weight from its scale tensor (`shape`, `values` already in
/// f32), checked against the layout the config declares: their count and shape, and each one
/// finite and positive. Errors say what was wrong, for the caller to name the tensor.
pub fn scales_for(
    layout: Fp8ScaleLayout,
    [rows, cols]: [usize; 2],
    shape: &[usize],
    values: Vec<f32>,
) -> Result<Fp8Scales, String> {
    let fits = match layout {
        Fp8ScaleLayout::Tensor => matches!(shape, [] | [1]),
        Fp8ScaleLayout::Channel => shape == [rows, 1] || shape == [rows],
        Fp8ScaleLayout::Block([b0, b1]) => shape == [rows.div_ceil(b0), cols.div_ceil(b1)],
    };
    if !fits {
        return Err(format!(
            "shape {shape:?} does not fit {} scales of a [{rows}, {cols}] weight",
            describe(layout, [rows, cols])
        ));
    }
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(format!(
            "scale {v} at flat index {i} is not finite and positive"
        ));
    }
    Ok(match layout {
        Fp8ScaleLayout::Tensor => Fp8Scales::Tensor(values[0]),
        Fp8ScaleLayout::Channel => Fp8Scales::Channel(values),
        Fp8ScaleLayout::Block(block) => Fp8Scales::Block {
            block,
            scales: values,
        },
    })
}

/// What `layout` expects, for errors.
fn describe(layout: Fp8ScaleLayout, [rows, cols]: [usize; 2]) -> String {
    match layout {
        Fp8ScaleLayout::Tensor => "per-tensor (shape [] or [1])".into(),
        Fp8ScaleLayout::Channel => format!("per-channel (shape [{rows}, 1])"),
        Fp8ScaleLayout::Block([b0, b1]) => format!(
            "{b0}x{b1} block (shape [{}, {}])",
            rows.div_ceil(b0),
            cols.div_ceil(b1)
        ),
    }
}

/// `t` dequantized to f32, row-major `[rows, cols]`: each code's value times its scale.
pub fn dequantize(t: &Fp8Tensor<'_>) -> Vec<f32> {
    let [rows, cols] = t.shape;
    let mut out = vec![0.0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(cols).enumerate() {
                let r = task * ROWS_PER_TASK + i;
                let codes = &t.bytes[r * cols..(r + 1) * cols];
                dequantize_row(&t.scales, r, cols, codes, row);
            }
        });
    out
}

/// Row `r` of a matrix with `cols` columns.
fn dequantize_row(scales: &Fp8Scales, r: usize, cols: usize, codes: &[u8], out: &mut [f32]) {
    let table = &*E4M3;
    let apply = |codes: &[u8], out: &mut [f32], s: f32| {
        for (y, &c) in out.iter_mut().zip(codes) {
            *y = table[usize::from(c)] * s;
        }
    };
    match scales {
        Fp8Scales::Tensor(s) => apply(codes, out, *s),
        Fp8Scales::Channel(s) => apply(codes, out, s[r]),
        Fp8Scales::Block { block, scales } => {
            let row_of_blocks = &scales[(r / block[0]) * cols.div_ceil(block[1])..];
            for ((codes, out), &s) in codes
                .chunks(block[1])
                .zip(out.chunks_mut(block[1]))
                .zip(row_of_blocks)
            {
                apply(codes, out, s);
            }
        }
    }
}

/// Names under which checkpoints store layer `layer`'s KV-cache scales, key's then value's:
/// `self_attn.k_scale` (quant_method "fp8" and recent llm-compressor),
/// `self_attn.k_proj.output_scale` (compressed-tensors' `kv_cache_scheme`), and the older
/// single `self_attn.kv_scale` for both, as vLLM reads them.
fn kv_scale_names(layer: usize) -> [[String; 2]; 3] {
    let p = format!("model.layers.{layer}.self_attn");
    [
        [format!("{p}.k_scale"), format!("{p}.v_scale")],
        [
            format!("{p}.k_proj.output_scale"),
            format!("{p}.v_proj.output_scale"),
        ],
        [format!("{p}.kv_scale"), format!("{p}.kv_scale")],
    ]
}

/// Layer `layer`'s per-tensor KV-cache scales `[k, v]` from the checkpoint, when it has them
/// (`None` otherwise: an FP8 cache then uses 1.0, as vLLM does). A cached key is its code's
/// value times `k`. A scale that is not one finite positive number is an error naming it.
pub fn kv_cache_scales(src: &dyn WeightSource, layer: usize) -> Result<Option<[f32; 2]>> {
    let Some([k, v]) = kv_scale_names(layer)
        .into_iter()
        .find(|pair| pair.iter().any(|n| src.contains(n)))
    else {
        return Ok(None);
    };
    let read = |name: &str| -> Result<f32> {
        let t = src.load_f32(name)?;
        match t.data.as_slice() {
            &[s] if s.is_finite() && s > 0.0 => Ok(s),
            other => Err(Error::invalid_model(
                "checkpoint",
                format!(
                    "tensor {name}: a KV-cache scale must be one finite positive number, got \
                     {other:?}"
                ),
            )),
        }
    };
    Ok(Some([read(&k)?, read(&v)?]))
}

#[cfg(test)]
#[path = "fp8_tests.rs"]
mod tests;
