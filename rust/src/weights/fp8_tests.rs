//! The e4m3fn codec against values built another way, dequantization with each scale layout,
//! and the checks on scales and KV-cache scales.

use super::*;
use crate::weights::HostTensor;

/// A code's value built from the f32 bit pattern (normals) or as an integer count of the
/// smallest subnormal (exponent 0), not through `decode`'s arithmetic.
fn reference(code: u8) -> f32 {
    let sign = u32::from(code >> 7) << 31;
    let exponent = u32::from((code >> 3) & 0x0f);
    let mantissa = u32::from(code & 0x07);
    if exponent == 0 {
        let magnitude = mantissa as f64 / 512.0;
        f32::from_bits(sign | (magnitude as f32).to_bits())
    } else {
        // Rebias 7 -> 127 and put the 3 mantissa bits at the top of f32's 23.
        f32::from_bits(sign | ((exponent + 120) << 23) | (mantissa << 20))
    }
}

#[test]
fn decodes_every_code() {
    for code in 0..=255u8 {
        let v = e4m3_to_f32(code);
        if code & 0x7f == 0x7f {
            assert!(v.is_nan() && is_nan_code(code), "{code:#04x}");
        } else {
            assert!(!is_nan_code(code));
            assert_eq!(v.to_bits(), reference(code).to_bits(), "{code:#04x}");
        }
    }
}

#[test]
fn matches_the_ocp_constants() {
    assert_eq!(e4m3_to_f32(0x7e), 448.0, "largest normal");
    assert_eq!(e4m3_to_f32(0xfe), -448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9), "smallest subnormal");
    assert_eq!(e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9), "largest subnormal");
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6), "smallest normal");
    assert_eq!(e4m3_to_f32(0x38), 1.0, "bias 7");
    assert_eq!(e4m3_to_f32(0x3c), 1.5);
    assert_eq!(e4m3_to_f32(0x00).to_bits(), 0);
    assert_eq!(e4m3_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
    // Codes 0..=0x7e are increasing: the format has no gaps and no infinity.
    assert!((1..0x7f).all(|c| e4m3_to_f32(c) > e4m3_to_f32(c - 1)));
}

#[test]
fn finds_nan_codes_anywhere() {
    let mut codes = vec![0x7eu8; 3 * BYTES_PER_TASK + 11];
    assert_eq!(find_nan_code(&codes), None);
    codes[2 * BYTES_PER_TASK + 5] = 0xff;
    codes[BYTES_PER_TASK + 7] = 0x7f;
    assert_eq!(find_nan_code(&codes), Some(BYTES_PER_TASK + 7));
    assert_eq!(find_nan_code(&[]), None);
}

/// A `[rows, cols]` matrix of codes that cycles through every non-NaN code.
fn codes(rows: usize, cols: usize) -> Vec<u8> {
    (0..rows * cols)
        .map(|i| {
            let c = (i * 37 % 254) as u8;
            if is_nan_code(c) {
                0x11
            } else {
                c
            }
        })
        .collect()
}

/// The scale of element (r, c), computed from the layout without `dequantize_row`'s slicing.
fn scale_at(scales: &Fp8Scales, cols: usize, r: usize, c: usize) -> f32 {
    match scales {
        Fp8Scales::Tensor(s) => *s,
        Fp8Scales::Channel(s) => s[r],
        Fp8Scales::Block { block, scales } => {
            let per_row = cols.div_ceil(block[1]);
            scales[(r / block[0]) * per_row + c / block[1]]
        }
    }
}

fn check_dequantize(rows: usize, cols: usize, scales: Fp8Scales) {
    let bytes = codes(rows, cols);
    let t = Fp8Tensor {
        shape: [rows, cols],
        bytes: &bytes,
        scales,
    };
    let out = dequantize(&t);
    assert_eq!(out.len(), rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let want = reference(bytes[r * cols + c]) * scale_at(&t.scales, cols, r, c);
            assert_eq!(out[r * cols + c], want, "({r}, {c}) of [{rows}, {cols}]");
        }
    }
}

#[test]
fn dequantizes_each_scale_layout() {
    check_dequantize(3, 5, Fp8Scales::Tensor(0.125));
    check_dequantize(
        37,
        9,
        Fp8Scales::Channel((0..37).map(|r| 1.0 + r as f32).collect()),
    );
    // Rows and columns that are not multiples of the block: the last tiles are partial.
    for (rows, cols, block) in [
        (300usize, 200usize, [128usize, 128]),
        (5, 7, [2, 3]),
        (128, 256, [128, 128]),
    ] {
        let n = rows.div_ceil(block[0]) * cols.div_ceil(block[1]);
        let scales = (0..n).map(|i| 0.5 + i as f32 * 0.25).collect();
        check_dequantize(rows, cols, Fp8Scales::Block { block, scales });
    }
}

#[test]
fn scales_are_checked_against_the_layout() {
    let w = [300, 200];
    let tensor = scales_for(Fp8ScaleLayout::Tensor, w, &[], vec![2.0]).unwrap();
    assert_eq!(tensor, Fp8Scales::Tensor(2.0));
    assert_eq!(
        scales_for(Fp8ScaleLayout::Tensor, w, &[1], vec![0.5]).unwrap(),
        Fp8Scales::Tensor(0.5)
    );
    let ch = scales_for(Fp8ScaleLayout::Channel, w, &[300, 1], vec![1.0; 300]).unwrap();
    assert_eq!(ch, Fp8Scales::Channel(vec![1.0; 300]));
    let layout = Fp8ScaleLayout::Block([128, 128]);
    let b = scales_for(layout, w, &[3, 2], vec![1.0; 6]).unwrap();
    assert!(matches!(
        b,
        Fp8Scales::Block {
            block: [128, 128],
            ..
        }
    ));
    let bad = [
        (
            Fp8ScaleLayout::Tensor,
            vec![2],
            vec![1.0, 1.0],
            "per-tensor",
        ),
        (
            Fp8ScaleLayout::Channel,
            vec![299, 1],
            vec![1.0; 299],
            "[300, 1]",
        ),
        (layout, vec![2, 2], vec![1.0; 4], "shape [3, 2]"),
        (
            Fp8ScaleLayout::Tensor,
            vec![],
            vec![0.0],
            "scale 0 at flat index 0",
        ),
        (
            Fp8ScaleLayout::Tensor,
            vec![],
            vec![-1.0],
            "not finite and positive",
        ),
        (
            layout,
            vec![3, 2],
            vec![1.0, 1.0, f32::NAN, 1.0, 1.0, 1.0],
            "NaN at flat index 2",
        ),
        (
            layout,
            vec![3, 2],
            vec![1.0, 1.0, 1.0, f32::INFINITY, 1.0, 1.0],
            "inf",
        ),
    ];
    for (layout, shape, values, want) in bad {
        let e = scales_for(layout, w, &shape, values).unwrap_err();
        assert!(e.contains(want), "{e} should contain {want}");
    }
}

/// A source of a few named scalars.
struct Scalars(Vec<(&'static str, Vec<f32>)>);

impl WeightSource for Scalars {
    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }
    fn load_f32(&self, name: &str) -> Result<HostTensor> {
        let (_, data) = self
            .0
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| Error::invalid_model("checkpoint", format!("no tensor {name}")))?;
        Ok(HostTensor {
            shape: vec![data.len()],
            data: data.clone(),
        })
    }
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.to_string()).collect()
    }
}

#[test]
fn reads_kv_cache_scales_under_each_name() {
    let src = Scalars(vec![
        ("model.layers.0.self_attn.k_scale", vec![0.5]),
        ("model.layers.0.self_attn.v_scale", vec![0.25]),
        ("model.layers.1.self_attn.k_proj.output_scale", vec![2.0]),
        ("model.layers.1.self_attn.v_proj.output_scale", vec![3.0]),
        ("model.layers.2.self_attn.kv_scale", vec![1.5]),
        ("model.layers.3.self_attn.k_scale", vec![1.0]),
        ("model.layers.4.self_attn.k_scale", vec![0.0]),
        ("model.layers.4.self_attn.v_scale", vec![1.0]),
        ("model.layers.5.self_attn.k_scale", vec![1.0, 2.0]),
        ("model.layers.5.self_attn.v_scale", vec![1.0]),
    ]);
    assert_eq!(kv_cache_scales(&src, 0).unwrap(), Some([0.5, 0.25]));
    assert_eq!(kv_cache_scales(&src, 1).unwrap(), Some([2.0, 3.0]));
    assert_eq!(kv_cache_scales(&src, 2).unwrap(), Some([1.5, 1.5]));
    assert_eq!(kv_cache_scales(&src, 6).unwrap(), None);
    let e = kv_cache_scales(&src, 3).unwrap_err().to_string();
    assert!(
        e.contains("no tensor model.layers.3.self_attn.v_scale"),
        "{e}"
    );
    for layer in [4, 5] {
        let e = kv_cache_scales(&src, layer).unwrap_err().to_string();
        assert!(
            e.contains(&format!("model.layers.{layer}.self_attn.k_scale"))
                && e.contains("one finite positive number"),
            "{e}"
        );
    }
}
