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
//!
//! Files: the tiled path and its portable tile (`tiled.rs`), the AVX2+FMA tile (`avx2.rs`),
//! the `gemm` crate path (`gemm_path.rs`); this file picks between them and holds the checks
//! and the reference.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod gemm_path;
mod tiled;

pub use gemm_path::gemm_into_columns;
use gemm_path::linear_gemm;
use tiled::{linear_tiled, Portable, Shape};

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
mod tests;
