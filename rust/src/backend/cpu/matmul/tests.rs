//! Every kernel against the f64 reference, on shapes that cover each tile remainder.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every implementation, including the ones `Auto` would not pick for a given `m`.
const KERNELS: [Kernel; 4] = [
    Kernel::Auto,
    Kernel::TiledPortable,
    Kernel::TiledAvx2Fma,
    Kernel::Gemm,
];

/// Uniform values in [-1, 1).
fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Euclidean norm, in f64.
fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt()
}

/// Checks every kernel against the f64 reference on fresh random inputs, with `out`
/// poisoned by NaN so that an element left unwritten fails. Bound per element:
/// `|out − ref| ≤ 1e-5 · (‖x_i‖·‖w_j‖ + |bias_j|)`; f32 accumulation over `k` terms in 8
/// lanes errs by about `(k/8 + 8) · 2⁻²⁴` times that, well under 1e-5 for every `k` here.
fn check(rng: &mut StdRng, m: usize, n: usize, k: usize, with_bias: bool) {
    let x = random(rng, m * k);
    let w = random(rng, n * k);
    let bias = with_bias.then(|| random(rng, n));
    let mut want = vec![0.0; m * n];
    linear_reference(&x, m, &w, n, k, bias.as_deref(), &mut want);
    for kernel in KERNELS {
        let mut out = vec![f32::NAN; m * n];
        linear_with(kernel, &x, m, &w, n, k, bias.as_deref(), &mut out);
        for i in 0..m {
            let xn = norm(&x[i * k..(i + 1) * k]);
            for j in 0..n {
                let b = bias.as_ref().map_or(0.0, |b| f64::from(b[j].abs()));
                let bound = 1e-5 * (xn * norm(&w[j * k..(j + 1) * k]) + b) + 1e-30;
                let (got, exp) = (out[i * n + j], want[i * n + j]);
                let err = (f64::from(got) - f64::from(exp)).abs();
                assert!(
                    err <= bound,
                    "{kernel:?} m={m} n={n} k={k} bias={with_bias}: out[{i}][{j}] = {got}, \
                     want {exp} (error {err:e} > bound {bound:e})"
                );
            }
        }
    }
}

#[test]
fn every_small_batch_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for m in 1..=20 {
        check(&mut rng, m, 13, 67, m % 2 == 0);
        check(&mut rng, m, 40, 64, m % 2 == 1);
    }
}

#[test]
fn odd_shapes_match_reference() {
    let mut rng = StdRng::seed_from_u64(2);
    for &(n, k) in &[
        (1, 1),
        (1, 9),
        (3, 7),
        (4, 8),
        (5, 15),
        (7, 31),
        (17, 100),
        (9, 577),
    ] {
        for m in [1, 2, 3, 4, 7] {
            check(&mut rng, m, n, k, true);
            check(&mut rng, m, n, k, false);
        }
    }
}

#[test]
fn several_parallel_blocks_match_reference() {
    // k = 64 makes 256-byte rows, so 1001 rows span several rayon blocks and a ragged one.
    let mut rng = StdRng::seed_from_u64(3);
    for m in [1, 5] {
        check(&mut rng, m, 1001, 64, true);
    }
}

#[test]
fn large_batches_match_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    check(&mut rng, TILED_MAX_M, 37, 65, true);
    check(&mut rng, TILED_MAX_M + 1, 37, 65, true);
    check(&mut rng, 200, 33, 96, false);
}

#[test]
fn empty_reduction_gives_bias_or_zero() {
    for kernel in KERNELS {
        for m in [1, 3, 40] {
            let mut out = vec![f32::NAN; m * 5];
            linear_with(
                kernel,
                &[],
                m,
                &[],
                5,
                0,
                Some(&[1.0, 2.0, 3.0, 4.0, 5.0]),
                &mut out,
            );
            assert!(
                out.chunks(5).all(|row| row == [1.0, 2.0, 3.0, 4.0, 5.0]),
                "{kernel:?}"
            );
            let mut out = vec![f32::NAN; m * 5];
            linear_with(kernel, &[], m, &[], 5, 0, None, &mut out);
            assert!(out.iter().all(|&v| v == 0.0), "{kernel:?}");
        }
    }
}

#[test]
fn empty_outputs_are_fine() {
    for kernel in KERNELS {
        linear_with(kernel, &[], 0, &[1.0; 6], 2, 3, None, &mut []);
        linear_with(kernel, &[1.0; 3], 1, &[], 0, 3, Some(&[]), &mut []);
    }
}

#[test]
#[should_panic(expected = "`w` has 5 elements, expected 2 × 3")]
fn wrong_weight_length_panics() {
    linear(&[0.0; 3], 1, &[0.0; 5], 2, 3, None, &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "`bias` has 1 elements, expected 2 × 1")]
fn wrong_bias_length_panics() {
    linear(&[0.0; 3], 1, &[0.0; 6], 2, 3, Some(&[0.0]), &mut [0.0; 2]);
}
