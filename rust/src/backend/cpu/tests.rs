use super::*;
use crate::backend::Backend;

/// A backend for the operations' tests (their KV layout is their own).
const CPU: CpuBackend = CpuBackend {
    keep_quantized: false,
    quantize: None,
    layout: KvLayout {
        num_layers: 1,
        block_size: 16,
        shape: AttentionShape {
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 8,
        },
        dtype: KvDtype::F32,
    },
};

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn add_rms_norm_matches_reference() {
    let (rows, width) = (3, 40);
    let x: Vec<f32> = (0..rows * width)
        .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
        .collect();
    let r0: Vec<f32> = (0..rows * width)
        .map(|i| ((i * 31) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let w: Vec<f32> = (0..width).map(|i| 0.5 + i as f32 / width as f32).collect();
    let mut residual = r0.clone();
    let mut out = vec![f32::NAN; rows * width];
    CPU.add_rms_norm(&mut residual, &x, &w, 1e-5, rows, &mut out);
    let mut want = Vec::new();
    for r in 0..rows {
        let sum: Vec<f64> = (0..width)
            .map(|i| r0[r * width + i] as f64 + x[r * width + i] as f64)
            .collect();
        let ms = sum.iter().map(|v| v * v).sum::<f64>() / width as f64;
        want.extend(
            sum.iter()
                .zip(&w)
                .map(|(v, w)| v / (ms + 1e-5).sqrt() * *w as f64),
        );
    }
    assert_close(&out, &want, 1e-5);
}

#[test]
fn rope_rotates_halves_and_writes_the_cache() {
    let shape = AttentionShape {
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 4,
    };
    let width = shape.qkv_width();
    let mut qkv: Vec<f32> = (0..2 * width).map(|i| i as f32 + 1.0).collect();
    let orig = qkv.clone();
    let batch = ForwardBatch {
        token_ids: vec![0, 0],
        positions: vec![0, 3],
        slot_mapping: vec![5, 2],
        ..Default::default()
    };
    let inv_freq = [1.0f32, 0.01];
    let cpu = CpuBackend::new(KvLayout {
        num_layers: 1,
        block_size: 4,
        shape,
        dtype: KvDtype::F32,
    });
    let mut cache = cpu.kv_cache(2).unwrap();
    cpu.rope_and_cache_write(&mut qkv, &batch, &inv_freq, shape, &mut cache, 0);
    // Position 0 is the identity; position 3 rotates pair (x_i, x_{i+2}) by 3 * inv_freq[i].
    assert_eq!(&qkv[..width], &orig[..width]);
    for head in 0..3 {
        let at = width + head * 4;
        for i in 0..2 {
            let (s, c) = (3.0 * inv_freq[i] as f64).sin_cos();
            let (x1, x2) = (orig[at + i] as f64, orig[at + i + 2] as f64);
            assert_close(&qkv[at + i..at + i + 1], &[x1 * c - x2 * s], 1e-6);
            assert_close(&qkv[at + i + 2..at + i + 3], &[x2 * c + x1 * s], 1e-6);
        }
    }
    // Row 1's rotated k and untouched v land in slot 2, row 0's in slot 5.
    assert_eq!(&cache.k[0][2 * 4..3 * 4], &qkv[width + 8..width + 12]);
    assert_eq!(&cache.v[0][2 * 4..3 * 4], &orig[width + 12..width + 16]);
    assert_eq!(&cache.k[0][5 * 4..6 * 4], &orig[8..12]);
}

#[test]
fn silu_mul_and_gather() {
    let x = vec![1.0f32, -2.0, 3.0, 4.0];
    let mut out = vec![f32::NAN; 2];
    CPU.silu_mul(&x, 1, 2, &mut out);
    let silu = |v: f64| v / (1.0 + (-v).exp());
    assert_close(&out, &[silu(1.0) * 3.0, silu(-2.0) * 4.0], 1e-6);
    let mut g = vec![f32::NAN; 2];
    CPU.gather_rows(&x, &[1], 2, &mut g);
    assert_eq!(g, vec![3.0, 4.0]);
}

/// The rows of a quantized matrix, dequantized, and its format.
fn blocks(m: CpuMatrix) -> (quant::QuantFormat, Vec<f32>) {
    let CpuMatrix::Quant(q) = m else {
        panic!("expected a quantized matrix")
    };
    let mut rows = vec![0.0; q.rows() * q.cols()];
    q.dequantize_rows(0, &mut rows);
    (q.format(), rows)
}

#[test]
fn quantizes_dense_projections_at_load() {
    use crate::weights::{HostTensor, RawTensor};
    let cpu = CPU.quantize_at_load(Some(LoadQuant::Q4_0));
    let values: Vec<f32> = (0..5 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (a, b) = bytes.split_at(2 * 64 * 4);
    let parts = [
        RawTensor {
            dtype: "F32",
            shape: &[2, 64],
            bytes: a,
        },
        RawTensor {
            dtype: "F32",
            shape: &[3, 64],
            bytes: b,
        },
    ];
    // Stacked parts from the bytes give the blocks of the f32 matrix's own quantization.
    let from_bytes = blocks(cpu.quantize_raw(&parts, false).unwrap().unwrap());
    let f32_matrix = cpu
        .matrix(HostTensor {
            shape: vec![5, 64],
            data: values,
        })
        .unwrap();
    let from_f32 = blocks(cpu.projection(f32_matrix).unwrap());
    assert_eq!(from_bytes, from_f32);
    assert_eq!(from_bytes.0, quant::QuantFormat::Q4_0);
    // The LM head goes to Q8_0 whatever the projections' format.
    let head = blocks(cpu.quantize_raw(&parts[..1], true).unwrap().unwrap());
    assert_eq!(head.0, quant::QuantFormat::Q8_0);
    // Blocks from a GGUF file, a backend that does not quantize: nothing to do here.
    let q8 = [RawTensor {
        dtype: "Q8_0",
        shape: &[1, 32],
        bytes: &[0; 34],
    }];
    assert!(cpu.quantize_raw(&q8, false).is_none());
    assert!(CPU.quantize_raw(&parts, false).is_none());
}
