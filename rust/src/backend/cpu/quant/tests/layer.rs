//! The whole quantized layer (task split, panels, matrix layout) against the f32 reference.

use super::*;

/// The whole layer (quantization, task split, gather of output pieces, bias) against
/// `linear_reference` on the dequantized weights and the quantized activations, for odd row
/// counts, one task (n = 37) and several (n = 3001; for the k-quants, 256 columns and as many
/// weights), every dot-product kernel.
#[test]
fn linear_matches_the_reference_layer() {
    let mut rng = StdRng::seed_from_u64(11);
    for format in QuantFormat::ALL {
        for (n, k) in [(37, 96), (3001, 64)].map(|(n, k)| shape(format, n, k)) {
            let bytes = random_blocks(&mut rng, format, n, k / format.block_elems());
            let w = matrix(format, &bytes, n, k);
            let wf = dequantize(format.ggml(), &bytes, n * k).unwrap();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.2).collect();
            for m in [1, 2, 5, 7, 9] {
                let x = random_x(&mut rng, m * k);
                let xq: Vec<f64> = x
                    .chunks_exact(k)
                    .flat_map(|r| dequantized_acts(&quantized(r)))
                    .collect();
                let xq32: Vec<f32> = xq.iter().map(|&v| v as f32).collect();
                let mut want = vec![0.0; m * n];
                linear_reference(&xq32, m, &wf, n, k, Some(&bias), &mut want);
                let kernels = [
                    DotKernel::Auto,
                    DotKernel::Integer,
                    DotKernel::Maddubs,
                    DotKernel::Scalar,
                ];
                for kernel in kernels {
                    let mut out = vec![f32::NAN; m * n];
                    linear_with(kernel, &x, m, &w, Some(&bias), &mut out);
                    for i in 0..m {
                        for j in 0..n {
                            let mag = term_magnitude(format, w.row(j), &xq[i * k..(i + 1) * k]);
                            let (g, e) = (out[i * n + j], want[i * n + j]);
                            let tol = 1e-5 * (mag + f64::from(bias[j].abs()));
                            assert!(
                                f64::from((g - e).abs()) <= tol,
                                "{format:?} {kernel:?} m {m} n {n} [{i}][{j}]: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn rows_dequantize_as_the_gguf_reader_does() {
    let mut rng = StdRng::seed_from_u64(3);
    for format in QuantFormat::ALL {
        let k = 2 * format.block_elems();
        let bytes = random_blocks(&mut rng, format, 5, 2);
        let w = matrix(format, &bytes, 5, k);
        let all = dequantize(format.ggml(), &bytes, 5 * k).unwrap();
        let mut row = vec![f32::NAN; k];
        w.dequantize_rows(3, &mut row);
        assert_eq!(row, &all[3 * k..4 * k]);
    }
}

#[test]
fn from_raw_stacks_parts_and_refuses_mismatches() {
    let mut rng = StdRng::seed_from_u64(4);
    let a = random_blocks(&mut rng, QuantFormat::Q4_1, 2, 2);
    let b = random_blocks(&mut rng, QuantFormat::Q4_1, 3, 2);
    let raw = |dtype, shape, bytes| RawTensor {
        dtype,
        shape,
        bytes,
    };
    let (s2, s3) = ([2, 64], [3, 64]);
    let m = QuantMatrix::from_raw(&[raw("Q4_1", &s2, &a), raw("Q4_1", &s3, &b)]).unwrap();
    assert_eq!((m.rows(), m.cols(), m.format()), (5, 64, QuantFormat::Q4_1));
    assert_eq!(m.row(3), &b[40..80]);
    let q8 = random_blocks(&mut rng, QuantFormat::Q8_0, 3, 2);
    assert!(QuantMatrix::from_raw(&[raw("Q4_1", &s2, &a), raw("Q8_0", &s3, &q8)]).is_none());
    assert!(QuantMatrix::from_raw(&[raw("Q4_1", &s2, &a[1..])]).is_none());
    assert!(QuantMatrix::from_raw(&[raw("Q4_1", &[3, 32], &a)]).is_none());
    assert!(QuantMatrix::from_raw(&[raw("Q4_1", &[2, 48], &a)]).is_none());
    assert!(
        QuantMatrix::from_raw(&[raw("Q6_K", &s2, &a)]).is_none(),
        "64 columns"
    );
    // Q2_K and Q3_K have no dot product here: the loader dequantizes them to f32.
    assert!(QuantMatrix::from_raw(&[raw("Q2_K", &[1, 256], &[0; 84])]).is_none());
    assert!(QuantMatrix::from_raw(&[raw("Q3_K", &[1, 256], &[0; 110])]).is_none());
    assert!(QuantMatrix::from_raw(&[raw("F32", &s2, &a)]).is_none());
    assert!(QuantMatrix::from_raw(&[]).is_none());
}

/// The panel path (and `Auto` from `DEQUANT_MIN_M` rows on) against `linear_reference` on
/// the dequantized weights and the unrounded activations: f32 GEMM error only,
/// `|err| ≤ 1e-5 · (Σ|w·x| + |bias|)`; n = 20001 with k = 64 (5001 × 256 for the k-quants)
/// spans two panels.
#[test]
fn dequant_panels_match_the_f32_reference() {
    let mut rng = StdRng::seed_from_u64(12);
    for format in QuantFormat::ALL {
        for (n, k, ms) in [(37, 96, &[1, DEQUANT_MIN_M + 1][..]), (20001, 64, &[3][..])] {
            let (n, k) = shape(format, n, k);
            let bytes = random_blocks(&mut rng, format, n, k / format.block_elems());
            let w = matrix(format, &bytes, n, k);
            let wf = dequantize(format.ggml(), &bytes, n * k).unwrap();
            let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect();
            for &m in ms {
                let x = random_x(&mut rng, m * k);
                let mut want = vec![0.0; m * n];
                linear_reference(&x, m, &wf, n, k, Some(&bias), &mut want);
                let kernels: &[DotKernel] = if m >= DEQUANT_MIN_M {
                    &[DotKernel::Dequant, DotKernel::Auto]
                } else {
                    &[DotKernel::Dequant]
                };
                for &kernel in kernels {
                    let mut out = vec![f32::NAN; m * n];
                    linear_with(kernel, &x, m, &w, Some(&bias), &mut out);
                    for i in 0..m {
                        for j in 0..n {
                            let xi: Vec<f64> = x[i * k..(i + 1) * k]
                                .iter()
                                .map(|&v| f64::from(v))
                                .collect();
                            let mag = term_magnitude(format, w.row(j), &xi);
                            let (g, e) = (out[i * n + j], want[i * n + j]);
                            let tol = 1e-5 * (mag + f64::from(bias[j].abs()));
                            assert!(
                                f64::from((g - e).abs()) <= tol,
                                "{format:?} {kernel:?} m {m} n {n} [{i}][{j}]: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}
