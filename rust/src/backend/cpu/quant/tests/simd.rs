//! The SIMD dot products (AVX2 `maddubs`, AVX-512 VNNI, NEON, the 16-bit tile) and unpacking
//! against the scalar ones on the same random inputs.

use super::*;

/// `$k.dot_rows::<R>($format, $row, $a)` for R = 1, 2, 3, 4, concatenated (10 values), for
/// [`dot_rows_match_scalar`]: the AVX2 and NEON kernels have the same method but no trait.
macro_rules! dot_rows_1_to_4 {
    ($k:expr, $format:expr, $row:expr, $a:expr) => {
        [
            &$k.dot_rows::<1>($format, $row, $a)[..],
            &$k.dot_rows::<2>($format, $row, $a)[..],
            &$k.dot_rows::<3>($format, $row, $a)[..],
            &$k.dot_rows::<4>($format, $row, $a)[..],
        ]
        .concat()
    };
}

/// A SIMD kernel's dot products against the scalar ones on the same inputs, for every format
/// it has: `dot(format, row, acts)` gives the row's products with 1, 2, 3 and 4 activation rows
/// at once, concatenated (10 values). Equal up to the order of f32 additions, `|err| ≤ 1e-5 ·
/// Σ|terms|` (the integer block sums are exact in every kernel).
fn dot_rows_match_scalar(
    has_kernel: impl Fn(QuantFormat) -> bool,
    dot: impl Fn(QuantFormat, &[u8], &[Q8Block]) -> Vec<f32>,
) {
    let mut rng = StdRng::seed_from_u64(5);
    for format in QuantFormat::ALL.into_iter().filter(|&f| has_kernel(f)) {
        for nb in [1, 5, 18, 48] {
            let row = random_blocks(&mut rng, format, 1, nb);
            let x = random_x(&mut rng, 4 * nb * BLOCK);
            let a = quantized(&x);
            let want: Vec<f32> = a
                .chunks_exact(nb)
                .map(|a| format.dot_scalar(&row, a))
                .collect();
            let got = dot(format, &row, &a);
            let want_at = [0, 0, 1, 0, 1, 2, 0, 1, 2, 3];
            assert_eq!(got.len(), want_at.len());
            let xq = dequantized_acts(&a);
            for (g, &r) in got.iter().zip(&want_at) {
                let mag = term_magnitude(format, &row, &xq[r * nb * BLOCK..(r + 1) * nb * BLOCK]);
                let err = f64::from((g - want[r]).abs());
                assert!(
                    err <= 1e-5 * mag,
                    "{format:?} nb {nb} row {r}: {g} vs {}",
                    want[r]
                );
            }
        }
    }
}

/// The AVX2 `maddubs` dot products against the scalar ones ([`dot_rows_match_scalar`]).
/// Requires AVX2, FMA and F16C on x86-64 (every x86-64 CPU this project is tested on has them).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_dot_matches_scalar() {
    let avx2 = avx2::Avx2::detect_with(false).expect("this x86-64 CPU lacks AVX2, FMA or F16C");
    assert!(!avx2.vnni());
    dot_rows_match_scalar(avx2::Avx2::has_kernel, |format, row, a| {
        avx2_rows(avx2, format, row, a)
    });
}

#[cfg(target_arch = "x86_64")]
fn avx2_rows(k: avx2::Avx2, format: QuantFormat, row: &[u8], a: &[Q8Block]) -> Vec<f32> {
    dot_rows_1_to_4!(k, format, row, a)
}

/// The AVX-512 VNNI dot products (`vpdpbusd`) against the scalar ones, and bit for bit against
/// the `maddubs` path on the same inputs (their integer lanes are equal by construction). Runs
/// where the CPU has AVX-512 VNNI and VL (the build machine and CI do: AMD EPYC with
/// `avx512_vnni`); elsewhere it says so and checks that no VNNI kernel was picked.
#[cfg(target_arch = "x86_64")]
#[test]
fn vnni_dot_matches_scalar_and_maddubs() {
    let vnni = avx2::Avx2::detect_with(true).expect("this x86-64 CPU lacks AVX2, FMA or F16C");
    let has = is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl");
    assert_eq!(vnni.vnni(), has);
    if !has {
        eprintln!("this CPU has no AVX-512 VNNI: its kernel was not run");
        return;
    }
    let maddubs = avx2::Avx2::detect_with(false).expect("AVX2");
    dot_rows_match_scalar(avx2::Avx2::has_kernel, |format, row, a| {
        let got = avx2_rows(vnni, format, row, a);
        let want = avx2_rows(maddubs, format, row, a);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "{format:?}: VNNI and maddubs differ"
        );
        got
    });
}

/// The NEON dot products against the scalar ones ([`dot_rows_match_scalar`]). Requires the
/// dot-product extension (Armv8.4, and most Armv8.2 cores: Graviton 2+, Apple M1+, Neoverse;
/// `qemu-aarch64`'s default CPU has it).
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_dot_matches_scalar() {
    let neon = neon::Neon::detect().expect("this aarch64 CPU lacks the dot-product extension");
    dot_rows_match_scalar(neon::Neon::has_kernel, |format, row, a| {
        dot_rows_1_to_4!(neon, format, row, a)
    });
}

/// The AVX2 16-bit tile against the scalar dot products on the same inputs, every format,
/// every tile shape (1–2 weight rows × 1–4 activation rows) and odd block counts (of 32, or of
/// 256 for the k-quants): equal up to f32 rounding, `|err| ≤ 1e-5 · Σ|terms|` (the integer
/// sums are exact in both; Q6_K's lanes, which carry the 8-bit scales, are rounded once when
/// converted to f32, as the scalar path's i64 sum is).
#[cfg(target_arch = "x86_64")]
#[test]
fn tile_matches_scalar() {
    let t = tile::Tile::detect().expect("this x86-64 CPU lacks AVX2, FMA or F16C");
    let mut rng = StdRng::seed_from_u64(6);
    for format in QuantFormat::ALL {
        for nblk in [1, 3, 18, 49] {
            let rb = nblk * format.block_bytes();
            let nb = nblk * format.block_elems() / BLOCK;
            let rows = random_blocks(&mut rng, format, 2, nblk);
            let a = quantized(&random_x(&mut rng, 4 * nb * BLOCK));
            let a16: Vec<tile::A16Block> = a.iter().map(tile::A16Block::from).collect();
            // Every tile shape: (weight rows, activation rows).
            macro_rules! tiles {
                ($(($w:literal, $r:literal)),*) => {
                    [$(t.dot::<$w, $r>(format, &rows, rb, &a16).map(Vec::from).to_vec()),*]
                };
            }
            let got: [Vec<Vec<f32>>; 8] = tiles!(
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (2, 1),
                (2, 2),
                (2, 3),
                (2, 4)
            );
            let xq = dequantized_acts(&a);
            for tile in &got {
                for (wr, dots) in tile.iter().enumerate() {
                    let row = &rows[wr * rb..(wr + 1) * rb];
                    for (r, &g) in dots.iter().enumerate() {
                        let want = format.dot_scalar(row, &a[r * nb..(r + 1) * nb]);
                        let xr = &xq[r * nb * BLOCK..(r + 1) * nb * BLOCK];
                        let err = f64::from((g - want).abs());
                        assert!(
                            err <= 1e-5 * term_magnitude(format, row, xr),
                            "{format:?} nb {nb} w{wr} a{r}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// Every format's AVX2 unpacking (`unpack.rs`, `unpack_k.rs`) against
/// [`QuantFormat::decode`] on random blocks, sub-block by sub-block: the same weights
/// `codes · d + m` exactly (f16 scales times 6- or 8-bit integers are exact in f32).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_unpacking_matches_decode() {
    use std::arch::x86_64::*;
    use unpack::{Unpack, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    use unpack_k::{Q4_K, Q5_K, Q6_K};

    /// Codes, scale per element, minimum.
    type SubBlock = ([i32; BLOCK], [f32; BLOCK], f32);
    /// # Safety
    ///
    /// `b` holds one block of `B`; the CPU has AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpacked<B: Unpack>(b: &[u8]) -> Vec<SubBlock> {
        assert_eq!(b.len(), B::BYTES);
        let scales = B::scales(b.as_ptr());
        (0..B::SUBS)
            .map(|s| {
                let mut c = [0i16; BLOCK];
                let [lo, hi] = B::codes(b.as_ptr(), s);
                _mm256_storeu_si256(c.as_mut_ptr().cast(), lo);
                _mm256_storeu_si256(c.as_mut_ptr().add(16).cast(), hi);
                let d: [f32; BLOCK] = std::array::from_fn(|i| match i < 16 || !B::TWO_SCALES {
                    true => scales.d[s],
                    false => scales.d_hi[s],
                });
                (c.map(i32::from), d, scales.m[s])
            })
            .collect()
    }
    assert!(
        tile::Tile::detect().is_some(),
        "this x86-64 CPU lacks AVX2, FMA or F16C"
    );
    let weights = |(codes, d, m): SubBlock| {
        std::array::from_fn::<f64, BLOCK, _>(|i| {
            f64::from(codes[i]) * f64::from(d[i]) + f64::from(m)
        })
    };
    let mut rng = StdRng::seed_from_u64(8);
    for format in QuantFormat::ALL {
        for b in random_blocks(&mut rng, format, 1, 200).chunks_exact(format.block_bytes()) {
            // SAFETY: the CPU has the features (checked above); `b` is one block of `format`.
            let got = unsafe {
                match format {
                    QuantFormat::Q4_0 => unpacked::<Q4_0>(b),
                    QuantFormat::Q4_1 => unpacked::<Q4_1>(b),
                    QuantFormat::Q5_0 => unpacked::<Q5_0>(b),
                    QuantFormat::Q5_1 => unpacked::<Q5_1>(b),
                    QuantFormat::Q8_0 => unpacked::<Q8_0>(b),
                    QuantFormat::Q4_K => unpacked::<Q4_K>(b),
                    QuantFormat::Q5_K => unpacked::<Q5_K>(b),
                    QuantFormat::Q6_K => unpacked::<Q6_K>(b),
                }
            };
            assert_eq!(got.len(), format.block_elems() / BLOCK);
            for (s, got) in got.into_iter().enumerate() {
                let (codes, d, m) = format.decode(b, s);
                let want = weights((codes, [d; BLOCK], m));
                assert_eq!(weights(got), want, "{format:?} sub-block {s}");
            }
        }
    }
}
