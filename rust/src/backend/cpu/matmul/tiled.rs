//! The tiled path: the `n` output columns split into blocks of weight rows, one rayon task per
//! block, each block computed by register tiles; the portable safe-Rust tile.

use rayon::prelude::*;

use super::{LANES, MIN_TASK_WEIGHT_BYTES, TASKS_PER_THREAD, TILE_M, TILE_N};

/// The inputs of one tiled call, checked by [`super::check_shapes`].
#[derive(Clone, Copy)]
pub(super) struct Shape<'a> {
    /// `m × k` activations.
    pub(super) x: &'a [f32],
    /// Rows of `x`.
    pub(super) m: usize,
    /// `n × k` weights.
    pub(super) w: &'a [f32],
    /// Length of every row of `x` and `w`.
    pub(super) k: usize,
    /// `n` biases, if any.
    pub(super) bias: Option<&'a [f32]>,
}

/// A register tile: `result[r][c] = w[r] · x[c]` for `R` weight rows and `C` rows of `x`,
/// both with row stride `k`, `w.len() ≥ R·k` and `x.len() ≥ C·k`.
pub(super) trait Tile: Sync {
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
pub(super) fn linear_tiled<T: Tile>(tile: &T, s: Shape<'_>, out: &mut [f32]) {
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
pub(super) fn block<T: Tile>(tile: &T, s: Shape<'_>, j0: usize, out: &mut [&mut [f32]]) {
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
pub(super) struct Portable;

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
