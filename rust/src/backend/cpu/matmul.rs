//! The CPU backend's linear layer: `out = x · wᵀ (+ bias)` in f32.
//!
//! Layout (all row-major, contiguous):
//! - `x`: `m × k` activations, one token per row;
//! - `w`: `n × k` weights in PyTorch `nn.Linear` layout, so each output's weights are contiguous;
//! - `bias`: `n` values, added to every row of `out`;
//! - `out`: `m × n`.
//!
//! Two strategies, picked by [`Kernel::Auto`] from `m` (measured, see `NOTES.md`):
//! - **Tiled dot products** for decode and short prefill chunks (`m ≤` [`TILED_MAX_M`]).
//!   Decode is memory bound: the point is to stream every weight row from memory exactly once
//!   per step, with the next weight tile prefetched while the current one runs. A tile holds
//!   [`TILE_N`] weight rows and up to [`TILE_M`] rows of `x` and keeps `TILE_N × TILE_M` vector
//!   accumulators of 8 lanes in registers, so each 8-float load of a weight row feeds up to
//!   `TILE_M` multiply-adds. On x86-64 with AVX2 and FMA (detected at run time: the wheel is
//!   built without `-C target-cpu=native`) the tile is written with `std::arch` intrinsics;
//!   elsewhere a portable safe-Rust tile of the same shape runs. Safe code shaped for the
//!   auto-vectorizer was measured and is not reliably vectorized, see `NOTES.md`.
//! - **The `gemm` crate** for prefill (`m >` [`TILED_MAX_M`]), which packs panels and runs
//!   register-blocked micro-kernels with its own run-time CPU dispatch.
//!
//! Parallel shape: the global rayon pool. The tiled path splits the `n` output columns into
//! contiguous blocks of weight rows (at least [`MIN_TASK_WEIGHT_BYTES`] of weights, about
//! [`TASKS_PER_THREAD`] blocks per thread); each task writes its columns of every output row.
//! `gemm` parallelizes internally on the same pool.

use rayon::prelude::*;

/// Weight rows per register tile.
pub const TILE_N: usize = 4;

/// Rows of `x` per register tile; `m` is covered by tiles of `TILE_M` rows, then one smaller.
pub const TILE_M: usize = 3;

/// Vector width of the accumulators, in f32 lanes (one AVX2 register).
const LANES: usize = 8;

/// Largest `m` that [`Kernel::Auto`] sends to the tiled kernel; larger batches go to `gemm`.
pub const TILED_MAX_M: usize = 32;

/// Smallest block of weights one rayon task streams, so that task overhead (a few µs) stays
/// small next to the time to read the block.
const MIN_TASK_WEIGHT_BYTES: usize = 64 * 1024;

/// Blocks per pool thread, so that a thread that starts late or runs slow does not hold up
/// the whole call.
const TASKS_PER_THREAD: usize = 4;

/// Which implementation of [`linear`] to run. [`Kernel::Auto`] is what the engine uses; the
/// others exist so that tests and `bench/cpu_matmul.rs` can check and time each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// The tiled kernel for `m ≤` [`TILED_MAX_M`] (AVX2+FMA when the CPU has it), `gemm` above.
    Auto,
    /// The tiled kernel in portable safe Rust; any `m`.
    TiledPortable,
    /// The tiled kernel with AVX2+FMA intrinsics; any `m`. Runs [`Kernel::TiledPortable`] on
    /// CPUs without AVX2 or FMA.
    TiledAvx2Fma,
    /// The `gemm` crate; any `m`.
    Gemm,
}

/// `out[i][j] = Σ_p x[i][p] · w[j][p] (+ bias[j])` for `i < m`, `j < n`, `p < k`.
///
/// See the module documentation for the layout and the strategy. Every element of `out` is
/// overwritten (nothing is accumulated into it), so `out` need not be initialized.
///
/// # Panics
///
/// Slice lengths are internal invariants of the forward pass (shapes come from a validated
/// model configuration), so a mismatch is a programmer error: this panics with a message
/// naming the slice when `x.len() != m·k`, `w.len() != n·k`, `out.len() != m·n` or
/// `bias.len() != n`.
pub fn linear(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    linear_with(Kernel::Auto, x, m, w, n, k, bias, out);
}

/// [`linear`] with the implementation chosen by the caller; same contract and panics.
#[allow(clippy::too_many_arguments)]
pub fn linear_with(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_shapes(x, m, w, n, k, bias, out);
    if m == 0 || n == 0 {
        return;
    }
    let kernel = match kernel {
        Kernel::Auto if m > TILED_MAX_M => Kernel::Gemm,
        Kernel::Auto => Kernel::TiledAvx2Fma,
        other => other,
    };
    let shape = Shape { x, m, w, k, bias };
    match kernel {
        Kernel::Gemm => linear_gemm(x, m, w, n, k, bias, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::TiledAvx2Fma => match avx2::Avx2Fma::detect() {
            Some(tile) => linear_tiled(&tile, shape, out),
            None => linear_tiled(&Portable, shape, out),
        },
        _ => linear_tiled(&Portable, shape, out),
    }
}

/// Panics unless every slice has the length its shape implies; see [`linear`].
fn check_shapes(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &[f32],
) {
    let check = |name: &str, len: usize, rows: usize, cols: usize| {
        assert!(
            rows.checked_mul(cols) == Some(len),
            "linear: `{name}` has {len} elements, expected {rows} × {cols}"
        );
    };
    check("x", x.len(), m, k);
    check("w", w.len(), n, k);
    check("out", out.len(), m, n);
    if let Some(b) = bias {
        check("bias", b.len(), n, 1);
    }
}

/// The inputs of one tiled call, checked by [`check_shapes`].
#[derive(Clone, Copy)]
struct Shape<'a> {
    /// `m × k` activations.
    x: &'a [f32],
    /// Rows of `x`.
    m: usize,
    /// `n × k` weights.
    w: &'a [f32],
    /// Length of every row of `x` and `w`.
    k: usize,
    /// `n` biases, if any.
    bias: Option<&'a [f32]>,
}

/// A register tile: `result[r][c] = w[r] · x[c]` for `R` weight rows and `C` rows of `x`,
/// both with row stride `k`, `w.len() ≥ R·k` and `x.len() ≥ C·k`.
trait Tile: Sync {
    /// Computes one tile. `next` is memory to prefetch into cache while the tile runs (the
    /// next weight tile; may be empty); a tile may ignore it.
    fn tile<const R: usize, const C: usize>(
        &self,
        w: &[f32],
        x: &[f32],
        k: usize,
        next: &[f32],
    ) -> [[f32; C]; R];

    /// Runs [`block`] with this tile, compiled with the instruction set the tile needs.
    fn block(&self, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]);
}

/// The tiled path: splits the `n` columns into blocks of weight rows and runs one rayon task
/// per block.
fn linear_tiled<T: Tile>(tile: &T, s: Shape<'_>, out: &mut [f32]) {
    let n = out.len() / s.m;
    let cols = block_cols(n, s.k);
    if s.m == 1 {
        // One output row: its blocks are disjoint sub-slices, nothing to gather.
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(b, piece)| tile.block(s, b * cols, &mut [piece]));
        return;
    }
    // Each task owns columns [j0, j0 + cols) of every output row: gather those row pieces.
    let blocks = n.div_ceil(cols);
    let mut per_block: Vec<Vec<&mut [f32]>> =
        (0..blocks).map(|_| Vec::with_capacity(s.m)).collect();
    for row in out.chunks_exact_mut(n) {
        for (b, piece) in row.chunks_mut(cols).enumerate() {
            per_block[b].push(piece);
        }
    }
    per_block
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut pieces)| tile.block(s, b * cols, &mut pieces));
}

/// Columns (weight rows) per rayon task: a multiple of [`TILE_N`], at least
/// [`MIN_TASK_WEIGHT_BYTES`] of weights, about [`TASKS_PER_THREAD`] tasks per pool thread.
fn block_cols(n: usize, k: usize) -> usize {
    let row_bytes = (k * std::mem::size_of::<f32>()).max(1);
    let min_cols = MIN_TASK_WEIGHT_BYTES.div_ceil(row_bytes);
    let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
    n.div_ceil(tasks)
        .max(min_cols)
        .min(n)
        .next_multiple_of(TILE_N)
}

/// One task's block: `out[i][jj] = x[i] · w[j0 + jj] (+ bias[j0 + jj])` for every row `i` of
/// `x` (`out` holds one piece per row, all of the same length) and every `jj` of the piece.
/// Weight tiles are the outer loop, so a tile is read from memory once and then served from
/// L1 to every row of `x`.
#[inline(always)]
fn block<T: Tile>(tile: &T, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
    let k = s.k;
    let jn = out.first().map_or(0, |p| p.len());
    let mut j = 0;
    while j < jn {
        let rows = (jn - j).min(TILE_N);
        let w_tile = &s.w[(j0 + j) * k..(j0 + j + rows) * k];
        let mut i = 0;
        while i < s.m {
            let xs = (s.m - i).min(TILE_M);
            let x_tile = &s.x[i * k..(i + xs) * k];
            // The first tile of a row of tiles pulls the next weight tile into cache: with
            // several rows of `x` a tile runs long enough that the hardware prefetcher alone
            // leaves the cores waiting on memory at the start of every weight tile.
            let next = match i {
                0 => &s.w[(j0 + j + rows) * k..(j0 + (j + 2 * rows).min(jn)) * k],
                _ => &[],
            };
            let mut sums = [[0.0f32; TILE_M]; TILE_N];
            match (rows, xs) {
                (TILE_N, 3) => put(&mut sums, tile.tile::<TILE_N, 3>(w_tile, x_tile, k, next)),
                (TILE_N, 2) => put(&mut sums, tile.tile::<TILE_N, 2>(w_tile, x_tile, k, next)),
                (TILE_N, 1) => put(&mut sums, tile.tile::<TILE_N, 1>(w_tile, x_tile, k, next)),
                // The last few weight rows of the block: one row at a time.
                _ => {
                    for (r, row) in sums.iter_mut().enumerate().take(rows) {
                        let w_row = &w_tile[r * k..(r + 1) * k];
                        for (c, sum) in row.iter_mut().enumerate().take(xs) {
                            let x_row = &x_tile[c * k..(c + 1) * k];
                            *sum = tile.tile::<1, 1>(w_row, x_row, k, &[])[0][0];
                        }
                    }
                }
            }
            for (c, piece) in out[i..i + xs].iter_mut().enumerate() {
                for (r, sum) in sums.iter().enumerate().take(rows) {
                    piece[j + r] = sum[c] + s.bias.map_or(0.0, |b| b[j0 + j + r]);
                }
            }
            i += xs;
        }
        j += rows;
    }
}

/// Copies an `R × C` tile result into the top-left corner of `dst`.
#[inline(always)]
fn put<const R: usize, const C: usize>(dst: &mut [[f32; TILE_M]; TILE_N], src: [[f32; C]; R]) {
    for (d, s) in dst.iter_mut().zip(src) {
        d[..C].copy_from_slice(&s);
    }
}

/// The portable tile: safe Rust, `R × C` accumulators of [`LANES`] lanes, unfused
/// multiply-adds. Whatever vectorization the compiler finds for the baseline target is a bonus.
struct Portable;

impl Tile for Portable {
    #[inline(always)]
    fn tile<const R: usize, const C: usize>(
        &self,
        w: &[f32],
        x: &[f32],
        k: usize,
        _next: &[f32],
    ) -> [[f32; C]; R] {
        let vectors = k / LANES;
        let body = vectors * LANES;
        let w_body: [&[f32]; R] = std::array::from_fn(|r| &w[r * k..r * k + body]);
        let x_body: [&[f32]; C] = std::array::from_fn(|c| &x[c * k..c * k + body]);
        let mut acc = [[[0.0f32; LANES]; C]; R];
        for q in 0..vectors {
            let p = q * LANES;
            for r in 0..R {
                let wv = &w_body[r][p..p + LANES];
                for c in 0..C {
                    let xv = &x_body[c][p..p + LANES];
                    for l in 0..LANES {
                        acc[r][c][l] += wv[l] * xv[l];
                    }
                }
            }
        }
        let mut result = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let a = &acc[r][c];
                let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
                for p in body..k {
                    s += w[r * k + p] * x[c * k + p];
                }
                result[r][c] = s;
            }
        }
        result
    }

    fn block(&self, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
        block(self, s, j0, out);
    }
}

/// The AVX2+FMA tile, with `std::arch` intrinsics.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{block, Shape, Tile, LANES};
    use std::arch::x86_64::*;

    /// Proof that this CPU has AVX2 and FMA: the only way to get one is [`Avx2Fma::detect`],
    /// which is what makes calling the `target_feature` functions below sound.
    pub(super) struct Avx2Fma(());

    impl Avx2Fma {
        /// `Some` when the CPU reports AVX2 and FMA (`std` caches the CPUID answer).
        pub(super) fn detect() -> Option<Self> {
            let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            ok.then_some(Avx2Fma(()))
        }
    }

    impl Tile for Avx2Fma {
        #[inline(always)]
        fn tile<const R: usize, const C: usize>(
            &self,
            w: &[f32],
            x: &[f32],
            k: usize,
            next: &[f32],
        ) -> [[f32; C]; R] {
            // SAFETY: `self` exists, so the CPU has AVX2 and FMA.
            unsafe { tile::<R, C>(w, x, k, next) }
        }

        fn block(&self, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
            // SAFETY: `self` exists, so the CPU has AVX2 and FMA.
            unsafe { block_avx2_fma(self, s, j0, out) }
        }
    }

    /// [`block`] compiled with AVX2 and FMA, so that the tiles inline into it.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_avx2_fma(t: &Avx2Fma, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
        block(t, s, j0, out);
    }

    /// The sum of the 8 lanes of `v`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)))
    }

    /// See [`Tile::tile`]. Loads go through bounds-checked slices (rows are cut to the
    /// vectorized length first, so the checks fold away); the tail of `k` beyond a multiple of
    /// 8 is done in scalar FMAs.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const C: usize>(
        w: &[f32],
        x: &[f32],
        k: usize,
        next: &[f32],
    ) -> [[f32; C]; R] {
        let vectors = k / LANES;
        let body = vectors * LANES;
        let mut w_body: [&[f32]; R] = [&[]; R];
        for (r, row) in w_body.iter_mut().enumerate() {
            *row = &w[r * k..r * k + body];
        }
        let mut x_body: [&[f32]; C] = [&[]; C];
        for (c, row) in x_body.iter_mut().enumerate() {
            *row = &x[c * k..c * k + body];
        }
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // Spread the prefetch of `next` over the loop: R·k floats in k/8 steps, so R/2 cache
        // lines of 16 floats per step cover it in one pass.
        let lines_per_step = R.div_ceil(2);
        for q in 0..vectors {
            let p = q * LANES;
            for l in 0..lines_per_step {
                let at = (q * lines_per_step + l) * 16;
                if at < next.len() {
                    _mm_prefetch::<_MM_HINT_T0>(next[at..].as_ptr().cast());
                }
            }
            let mut xv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm256_loadu_ps(x_body[c][p..p + LANES].as_ptr());
            }
            for r in 0..R {
                let wv = _mm256_loadu_ps(w_body[r][p..p + LANES].as_ptr());
                for c in 0..C {
                    acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
                }
            }
        }
        let mut result = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s = hsum(acc[r][c]);
                for p in body..k {
                    s = w[r * k + p].mul_add(x[c * k + p], s);
                }
                result[r][c] = s;
            }
        }
        result
    }
}

/// The `gemm` crate path: `out = 1·out + 1·(x · wᵀ)` with `out` pre-filled with the bias, or
/// `out = x · wᵀ` without one. `wᵀ` is described by strides (row stride 1, column stride `k`),
/// so nothing is transposed in memory.
#[allow(clippy::too_many_arguments)]
fn linear_gemm(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    match bias {
        Some(b) => out
            .chunks_exact_mut(n)
            .for_each(|row| row.copy_from_slice(b)),
        None if k == 0 => out.fill(0.0),
        None => {}
    }
    if k == 0 {
        return;
    }
    // SAFETY: `check_shapes` verified x: m·k, w: n·k, out: m·n elements, and every address
    // gemm forms from these sizes and strides lies inside those slices:
    // dst[i][j] = out[i·n + j], lhs[i][p] = x[i·k + p], rhs[p][j] = w[j·k + p]. `out` is a
    // unique borrow, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// The naive reference: `out[i][j] = Σ_p x[i][p] · w[j][p] (+ bias[j])` accumulated in f64,
/// one thread. Slow; for tests and `bench/cpu_matmul.rs` only. Same panics as [`linear`].
pub fn linear_reference(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    check_shapes(x, m, w, n, k, bias, out);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| f64::from(x[i * k + p]) * f64::from(w[j * k + p]))
                .sum();
            out[i * n + j] = (dot + bias.map_or(0.0, |b| f64::from(b[j]))) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
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
}
