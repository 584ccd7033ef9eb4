//! FP8 weights read from safetensors files: each scale layout, and every way a checkpoint can
//! get them wrong.

use super::tests::{f32s, file, TempDir};
use super::*;
use crate::config::{Fp8Activations, Fp8Format, Fp8ScaleLayout, IgnoredModule};
use crate::weights::fp8::e4m3_to_f32;
use crate::weights::Fp8Scales;

/// 3 x 4 codes: 1.0, 1.5, -2.0, 0.5, then the same times 2, then times 4.
const CODES: [u8; 12] = [
    0x38, 0x3c, 0xc0, 0x30, 0x40, 0x44, 0xc8, 0x38, 0x48, 0x4c, 0xd0, 0x40,
];

fn config(format: Fp8Format, scales: Fp8ScaleLayout) -> Fp8Config {
    Fp8Config {
        format,
        scales,
        activations: Fp8Activations::Dynamic,
        ignore: vec![IgnoredModule::Exact("lm_head".into())],
        kv_cache_scheme: false,
    }
}

fn bf16s(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect()
}

/// Opens a one-file checkpoint of `tensors`, read as `q` declares.
fn open(
    dir: &TempDir,
    tensors: &[(&str, &str, &[u64], Vec<u8>)],
    q: Option<Fp8Config>,
) -> SafetensorsWeights {
    dir.write(SINGLE_FILE, &file(tensors));
    SafetensorsWeights::open_dir(&dir.0)
        .unwrap()
        .with_quantization(q)
}

fn weight() -> (&'static str, &'static str, &'static [u64], Vec<u8>) {
    ("l.q_proj.weight", "F8_E4M3", &[3, 4], CODES.to_vec())
}

fn decoded(scale: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    (0..12)
        .map(|i| e4m3_to_f32(CODES[i]) * scale(i / 4, i % 4))
        .collect()
}

#[test]
fn per_tensor_scales_in_bf16_with_an_input_scale() {
    let dir = TempDir::new("fp8-tensor");
    let q = config(Fp8Format::CompressedTensors, Fp8ScaleLayout::Tensor);
    let w = open(
        &dir,
        &[
            weight(),
            ("l.q_proj.weight_scale", "BF16", &[1], bf16s(&[0.25])),
            ("l.q_proj.input_scale", "F32", &[1], f32s(&[0.1])),
        ],
        Some(q),
    );
    let t = w.fp8("l.q_proj.weight").unwrap().unwrap();
    assert_eq!((t.shape, t.bytes), ([3, 4], &CODES[..]));
    assert_eq!(t.scales, Fp8Scales::Tensor(0.25));
    let dense = w.load_f32("l.q_proj.weight").unwrap();
    assert_eq!(dense.shape, [3, 4]);
    assert_eq!(dense.data, decoded(|_, _| 0.25));
    assert_eq!(dense.data[..4], [0.25, 0.375, -0.5, 0.125]);
    assert!(
        w.raw("l.q_proj.weight").is_none(),
        "codes never leave without scales"
    );
    assert!(
        w.fp8("l.q_proj.weight_scale").is_none(),
        "a dense tensor is not FP8"
    );
    assert!(w.fp8("absent").is_none());
}

#[test]
fn per_channel_scales() {
    let dir = TempDir::new("fp8-channel");
    let q = config(Fp8Format::CompressedTensors, Fp8ScaleLayout::Channel);
    let scales = [0.5, 2.0, 0.125];
    let w = open(
        &dir,
        &[
            weight(),
            ("l.q_proj.weight_scale", "F32", &[3, 1], f32s(&scales)),
        ],
        Some(q),
    );
    let dense = w.load_f32("l.q_proj.weight").unwrap();
    assert_eq!(dense.data, decoded(|r, _| scales[r]));
}

#[test]
fn block_scales_named_scale_inv_multiply() {
    let dir = TempDir::new("fp8-block");
    // 2 x 3 blocks over 3 x 4: a 2 x 2 grid, the last row and column of blocks partial.
    let q = config(Fp8Format::Fp8, Fp8ScaleLayout::Block([2, 3]));
    let scales = [1.0, 4.0, 0.5, 8.0];
    let w = open(
        &dir,
        &[
            weight(),
            ("l.q_proj.weight_scale_inv", "F32", &[2, 2], f32s(&scales)),
        ],
        Some(q),
    );
    let t = w.fp8("l.q_proj.weight").unwrap().unwrap();
    assert_eq!(
        t.scales,
        Fp8Scales::Block {
            block: [2, 3],
            scales: scales.to_vec()
        }
    );
    let dense = w.load_f32("l.q_proj.weight").unwrap();
    assert_eq!(dense.data, decoded(|r, c| scales[(r / 2) * 2 + c / 3]));
}

fn fp8_err(w: &SafetensorsWeights) -> String {
    let via_fp8 = w.fp8("l.q_proj.weight").unwrap().unwrap_err().to_string();
    let via_f32 = w.load_f32("l.q_proj.weight").unwrap_err().to_string();
    assert_eq!(via_fp8, via_f32);
    via_fp8
}

#[test]
fn broken_fp8_weights_are_errors_naming_the_tensor() {
    let tensor = || Some(config(Fp8Format::CompressedTensors, Fp8ScaleLayout::Tensor));
    let scale = |v: f32| ("l.q_proj.weight_scale", "F32", &[1u64][..], f32s(&[v]));
    let mut nan_code = weight();
    nan_code.3[5] = 0xff;
    let cases: Vec<(Vec<_>, Option<Fp8Config>, &str)> = vec![
        (
            vec![weight(), scale(1.0)],
            None,
            "has no FP8 quantization_config",
        ),
        (
            vec![weight()],
            tensor(),
            "its scale l.q_proj.weight_scale is missing",
        ),
        (
            vec![weight(), scale(0.0)],
            tensor(),
            "scale 0 at flat index 0",
        ),
        (
            vec![weight(), scale(-2.0)],
            tensor(),
            "not finite and positive",
        ),
        (
            vec![weight(), scale(f32::NAN)],
            tensor(),
            "weight_scale holds a non-finite",
        ),
        (
            vec![
                weight(),
                ("l.q_proj.weight_scale", "F32", &[3, 1], f32s(&[1.0; 3])),
            ],
            tensor(),
            "shape [3, 1] does not fit per-tensor",
        ),
        (
            vec![weight(), scale(1.0)],
            Some(config(Fp8Format::Fp8, Fp8ScaleLayout::Block([2, 2]))),
            "its scale l.q_proj.weight_scale_inv is missing",
        ),
        (
            vec![nan_code, scale(1.0)],
            tensor(),
            "NaN code 0xff at flat index 5",
        ),
        (
            vec![
                ("l.q_proj.weight", "F8_E4M3", &[12], CODES.to_vec()),
                scale(1.0),
            ],
            tensor(),
            "shape [12], not a matrix",
        ),
    ];
    for (i, (tensors, q, want)) in cases.into_iter().enumerate() {
        let dir = TempDir::new(&format!("fp8-bad-{i}"));
        let e = fp8_err(&open(&dir, &tensors, q));
        assert!(e.contains("tensor l.q_proj.weight"), "{e}");
        assert!(e.contains(want), "{e} should contain {want}");
    }
}

#[test]
fn an_ignored_module_stored_in_fp8_is_an_error() {
    let dir = TempDir::new("fp8-ignored");
    let q = config(Fp8Format::CompressedTensors, Fp8ScaleLayout::Tensor);
    let w = open(
        &dir,
        &[
            ("lm_head.weight", "F8_E4M3", &[3, 4], CODES.to_vec()),
            ("lm_head.weight_scale", "F32", &[1], f32s(&[1.0])),
        ],
        Some(q),
    );
    let e = w.load_f32("lm_head.weight").unwrap_err().to_string();
    assert!(e.contains("lists lm_head as not quantized"), "{e}");
}

#[test]
fn e5m2_weights_are_unsupported_naming_the_dtype() {
    let dir = TempDir::new("fp8-e5m2");
    let q = config(Fp8Format::CompressedTensors, Fp8ScaleLayout::Tensor);
    let w = open(
        &dir,
        &[("l.q_proj.weight", "F8_E5M2", &[3, 4], CODES.to_vec())],
        Some(q),
    );
    for e in [
        w.fp8("l.q_proj.weight").unwrap().unwrap_err(),
        w.load_f32("l.q_proj.weight").unwrap_err(),
    ] {
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("tensor l.q_proj.weight: dtype F8_E5M2"),
            "{e}"
        );
    }
    assert!(w.raw("l.q_proj.weight").is_none());
}
