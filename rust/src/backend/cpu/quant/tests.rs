//! Checks of the quantized linear layer against the dequantize-then-f64 reference, on random
//! blocks, and the shared helpers of the submodules (`simd.rs`: the SIMD kernels against the
//! scalar ones; `layer.rs`, `gguf_file.rs`).

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::backend::cpu::matmul::linear_reference;
use crate::weights::ggml_quants::dequantize;

/// `rows` random rows of `nb` blocks of `format`: f16 scales of either sign in [2⁻⁹, 2⁻⁴],
/// every other byte random (Q8_0 codes include −128, which ggml never writes but a file may;
/// the k-quants' sub-block scales and minimums take their whole range).
fn random_blocks(rng: &mut StdRng, format: QuantFormat, rows: usize, nb: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * nb * format.block_bytes());
    for _ in 0..rows * nb {
        let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| rng.random()).collect();
        let scale = |rng: &mut StdRng| {
            let v = rng.random_range(2f32.powi(-9)..2f32.powi(-4));
            let v = if rng.random() { v } else { -v };
            f16::from_f32(v).to_bits().to_le_bytes()
        };
        let f16s: &[usize] = match format {
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => {
                &[0, 2]
            }
            QuantFormat::Q6_K => &[208],
            _ => &[0],
        };
        for &at in f16s {
            b[at..at + 2].copy_from_slice(&scale(rng));
        }
        out.extend(b);
    }
    out
}

/// Activations like a normalized hidden state, with a few outliers ten times larger.
fn random_x(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v: f32 = rng.random_range(-1.0..1.0);
            if i % 37 == 5 {
                10.0 * v
            } else {
                v
            }
        })
        .collect()
}

/// `(n, k)` for `format`: `k` rounded up to whole blocks (256 for the k-quants), `n` scaled
/// down to keep about `n · k` weights (an odd count, still several tasks or panels).
fn shape(format: QuantFormat, n: usize, k: usize) -> (usize, usize) {
    let kk = k.next_multiple_of(format.block_elems());
    ((n * k / kk) | 1, kk)
}

fn quantized(x: &[f32]) -> Vec<Q8Block> {
    let mut a = vec![Q8Block::default(); x.len() / BLOCK];
    quantize_row(x, &mut a);
    a
}

/// The activations the kernels see: `d · (254 · qs + qs2)` per element, in f64 (exact).
fn dequantized_acts(a: &[Q8Block]) -> Vec<f64> {
    a.iter()
        .flat_map(|b| {
            (0..BLOCK).map(move |i| {
                f64::from(b.d)
                    * f64::from(RESIDUAL_STEPS * i32::from(b.qs[i]) + i32::from(b.qs2[i]))
            })
        })
        .collect()
}

fn matrix(format: QuantFormat, bytes: &[u8], rows: usize, cols: usize) -> QuantMatrix {
    let shape = [rows, cols];
    let raw = RawTensor {
        dtype: format.ggml().name(),
        shape: &shape,
        bytes,
    };
    QuantMatrix::from_raw(&[raw]).expect("a valid matrix")
}

/// `Σ_i (|codes_i · d| + |m|) · |a_i|` over a row: the size of the terms a dot product
/// adds, which bounds its f32 rounding.
fn term_magnitude(format: QuantFormat, row: &[u8], a: &[f64]) -> f64 {
    format
        .sub_blocks(row)
        .zip(a.chunks_exact(BLOCK))
        .map(|((codes, d, m), a)| {
            codes
                .iter()
                .zip(a)
                .map(|(&c, &a)| (f64::from(c as f32 * d).abs() + f64::from(m).abs()) * a.abs())
                .sum::<f64>()
        })
        .sum()
}

/// The scalar dot product of each format, on random rows of 1 to 48 blocks (of 32 or 256):
/// - against the weights dequantized by the GGUF reader times the activations as quantized
///   (`d·(254·qs + qs2)`), in f64: equal up to f32 rounding (of the products, the sum, and
///   the exact i64 block sum converted to f32), `|err| ≤ 1e-5 · Σ|terms|`;
/// - against the same weights times the original activations, in f64: the rounding of the
///   activations (at most `d/2 = max|x|/64,516` per element, plus the f32 rounding of the
///   residual, below `1e-6·|x|`) is the only other error, so
///   `|err| ≤ Σ_i (d/2 + 1e-6·|x_i|)·|w_i| + 1e-5 · Σ|terms|`.
#[test]
fn scalar_dot_matches_the_dequantized_reference() {
    let mut rng = StdRng::seed_from_u64(18);
    for format in QuantFormat::ALL {
        for nb in [1, 2, 3, 18, 48] {
            for _ in 0..20 {
                let k = nb * format.block_elems();
                let row = random_blocks(&mut rng, format, 1, nb);
                let w = dequantize(format.ggml(), &row, k).unwrap();
                let x = random_x(&mut rng, k);
                let a = quantized(&x);
                let xq = dequantized_acts(&a);
                let got = f64::from(format.dot_scalar(&row, &a));
                let mag = term_magnitude(format, &row, &xq);
                let exact: f64 = w.iter().zip(&xq).map(|(&w, &x)| f64::from(w) * x).sum();
                assert!(
                    (got - exact).abs() <= 1e-5 * mag,
                    "{format:?} nb {nb}: {got} vs {exact}"
                );
                let true_dot: f64 = w
                    .iter()
                    .zip(&x)
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                let rounding: f64 = w
                    .chunks_exact(BLOCK)
                    .zip(x.chunks_exact(BLOCK))
                    .zip(&a)
                    .map(|((w, x), a)| {
                        w.iter()
                            .zip(x)
                            .map(|(w, x)| {
                                (f64::from(a.d) / 2.0 + 1e-6 * f64::from(x.abs()))
                                    * f64::from(w.abs())
                            })
                            .sum::<f64>()
                    })
                    .sum();
                let err = (got - true_dot).abs();
                assert!(
                    err <= rounding + 1e-5 * mag,
                    "{format:?} nb {nb}: {got} vs {true_dot}"
                );
            }
        }
    }
}

/// The first level rounds to steps of `max|x| / 127` (the largest value reaches code ±127),
/// the residual level to steps of `d = max|x| / (127·254)`: each value ends within `d/2`
/// (plus the f32 rounding of the residual, below `1e-6·|x|`).
#[test]
fn activation_blocks_round_in_two_levels() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = random_x(&mut rng, 4 * BLOCK);
    let a = quantized(&x);
    let xq = dequantized_acts(&a);
    for ((b, x), xq) in a
        .iter()
        .zip(x.chunks_exact(BLOCK))
        .zip(xq.chunks_exact(BLOCK))
    {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(b.d, amax / (127.0 * 254.0));
        assert!(b.qs.iter().any(|&q| q.abs() == 127));
        for (&v, &vq) in x.iter().zip(xq) {
            let bound = f64::from(b.d) * 0.5 * (1.0 + 1e-6) + 1e-6 * f64::from(v.abs());
            assert!((vq - f64::from(v)).abs() <= bound, "{v} vs {vq}");
        }
        let sum: f64 = xq.iter().sum();
        assert!((f64::from(b.s) - sum).abs() <= 1e-6 * f64::from(amax) * BLOCK as f64);
    }
    assert_eq!(quantized(&[0.0; BLOCK])[0], Q8Block::default());
}

mod gguf_file;
mod layer;
mod simd;
