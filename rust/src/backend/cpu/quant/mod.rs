//! Weights kept in ggml block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the k-quants Q4_K,
//! Q5_K, Q6_K: GGUF blocks as the file stores them) and the linear layer over them with
//! integer dot products, as llama.cpp computes it.
//!
//! `out[i][j] = Σ_p x[i][p] · w[j][p] (+ bias[j])`, with `w` an `n × k` matrix of blocks (row
//! `j` is its format's blocks, contiguous; a k-quant super-block is 8 sub-blocks of 32) and
//! `x` quantized first, per 32 values, to [`Q8Block`]s. The quantization of `x` is the only rounding beyond f32 arithmetic: the
//! weights enter with their exact values (`codes · d + m`), the block sums are exact integers.
//!
//! Two strategies, picked by [`DotKernel::Auto`] from `m` (measured, see `NOTES.md`):
//! - **Integer dot products** for decode and short chunks (`m <` [`DEQUANT_MIN_M`]): memory
//!   bound, so the point is to read each weight block once. The `n` weight rows are split
//!   into contiguous blocks (at least [`MIN_TASK_WEIGHT_BYTES`] of weights, about
//!   [`TASKS_PER_THREAD`] per pool thread), one task each of a `spin_pool` region. A task runs the AVX2
//!   16-bit register tile (`tile.rs`: 2 weight rows × 4 activation rows, each weight block
//!   widened once per 4 rows, each activation block loaded once per 2 weight rows); Q8_0
//!   matrices below [`TILE_Q8_0_MIN_M`] rows run the `maddubs` kernel (`avx2.rs`: one weight
//!   row × [`ROWS_PER_DOT`] activation rows), which reads bytes as they are.
//! - **Dequantized panels** for prefill (`m ≥` [`DEQUANT_MIN_M`]): compute bound, where the
//!   integer kernels spend more instructions per multiply-add (two scales every 32 values)
//!   than an f32 GEMM. Panels of at most [`PANEL_ELEMENTS`] weights are dequantized into a
//!   reused buffer and multiplied by the `gemm` crate; the activations stay f32.
//!
//! Files: the activation blocks (`q8.rs`), the formats and their scalar reference dot product
//! (`format.rs`, `kquant.rs`), the AVX2 dot products (`tile.rs` for every format, with each
//! format's unpacking in `unpack.rs` and `unpack_k.rs`; `avx2.rs` for Q4_0, Q4_1 and Q8_0), the
//! aarch64 dot products (`neon.rs`: Q4_0, Q4_1 and Q8_0 with `sdot`; the other formats run the
//! scalar reference there), the panel path (`panels.rs`); this file holds the matrix, the
//! dispatch and the split (`split.rs`).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod format;
mod kquant;
#[cfg(target_arch = "aarch64")]
mod neon;
mod panels;
mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_avx2;
mod split;
#[cfg(target_arch = "x86_64")]
mod tile;
#[cfg(target_arch = "x86_64")]
mod unpack;
#[cfg(target_arch = "x86_64")]
mod unpack_k;

pub use format::QuantFormat;
pub use q8::{quantize_row, Q8Block, RESIDUAL_STEPS};

use std::cell::RefCell;

use rayon::prelude::*;

use super::WeightBuf;
use crate::weights::ggml_quants::dequantize_into;
use crate::weights::RawTensor;
use panels::linear_dequant;
use split::split;

/// Elements per block in every format here (`QK4_0 = QK4_1 = QK8_0 = 32` in ggml).
pub const BLOCK: usize = 32;

/// Activation rows per dot-product call of a task.
const ROWS_PER_DOT: usize = 4;

/// Smallest block of weights one task reads (as in `matmul`).
const MIN_TASK_WEIGHT_BYTES: usize = 64 * 1024;

/// Tasks per pool thread (as in `matmul`).
const TASKS_PER_THREAD: usize = 4;

/// Smallest `m` from which [`DotKernel::Auto`] runs Q8_0 matrices with the 16-bit tile
/// rather than the `maddubs` kernel.
const TILE_Q8_0_MIN_M: usize = 16;

/// Columns from which [`DotKernel::Auto`] runs a one-row product on the `maddubs` kernel
/// where it has one (Q4_0, Q4_1): SmolLM2's Q4_1 `down` (k = 1,536) took 46 µs there against
/// 58 µs in the tile, while at k = 576 the tile is the faster by 8–13 % (`NOTES.md`).
#[cfg(target_arch = "x86_64")]
const MADDUBS_M1_MIN_COLS: usize = 1024;

/// Smallest `m` that [`DotKernel::Auto`] sends to the dequantized-panel path.
pub const DEQUANT_MIN_M: usize = 32;

/// An `rows × cols` weight matrix of ggml blocks, row-major.
///
/// Invariant: `cols % format.block_elems() == 0` and
/// `data.len() == rows · cols / format.block_elems() · format.block_bytes()`.
pub struct QuantMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    data: WeightBuf<u8>,
}

impl QuantMatrix {
    /// `parts` stacked along rows, copied once from their bytes; `None` unless every part is
    /// 2-D with the same column count (a multiple of the format's block), has the same format among
    /// [`QuantFormat::ALL`], and holds the bytes its shape implies.
    pub fn from_raw(parts: &[RawTensor<'_>]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        let format = QuantFormat::from_name(first.dtype)?;
        let cols = *first.shape.get(1)?;
        if cols == 0 || cols % format.block_elems() != 0 {
            return None;
        }
        let row_bytes = cols / format.block_elems() * format.block_bytes();
        let mut rows = 0;
        for p in parts {
            let ok = p.dtype == first.dtype
                && p.shape.len() == 2
                && p.shape[1] == cols
                && p.shape[0].checked_mul(row_bytes) == Some(p.bytes.len());
            if !ok {
                return None;
            }
            rows += p.shape[0];
        }
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.bytes).collect();
        Some(QuantMatrix {
            format,
            rows,
            cols,
            data: WeightBuf::from_slices(&slices),
        })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output rows (`n`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns (`k`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of one row.
    fn row_bytes(&self) -> usize {
        self.cols / self.format.block_elems() * self.format.block_bytes()
    }

    /// Rows `r..r + count`'s blocks (the tile reads two rows at once).
    #[cfg(target_arch = "x86_64")]
    fn rows_bytes(&self, r: usize, count: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + count) * rb]
    }

    /// Row `r`'s blocks.
    fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `r0..r0 + out.len() / cols` dequantized into `out`, exactly as the GGUF reader
    /// would have (the embedding lookup, the panel path).
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        let rows = out.len() / self.cols;
        dequantize_into(
            self.format.ggml(),
            &self.data[r0 * rb..(r0 + rows) * rb],
            out,
        )
        .expect("the invariant holds whole blocks of a dequantizable type");
    }
}

/// Which implementation [`linear_with`] runs. [`DotKernel::Auto`] is what the engine uses;
/// the others exist so that tests and benchmarks can check and time each one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotKernel {
    /// [`DotKernel::Integer`] for `m <` [`DEQUANT_MIN_M`] ([`DotKernel::Maddubs`] for Q8_0
    /// below [`TILE_Q8_0_MIN_M`], and for one row of [`MADDUBS_M1_MIN_COLS`] columns or more),
    /// [`DotKernel::Dequant`] above.
    Auto,
    /// Integer dot products, the AVX2 16-bit tile where the CPU has it (with FMA and F16C),
    /// else scalar.
    Integer,
    /// Integer dot products with the AVX2 `maddubs` kernel (one weight row × up to 4
    /// activation rows, each 8-bit level apart) for Q4_0, Q4_1 and Q8_0, else scalar: the
    /// previous kernel, for the benchmark (and Q8_0's decode).
    Maddubs,
    /// Integer dot products with [`QuantFormat::dot_scalar`], the reference.
    Scalar,
    /// Dequantized panels through the `gemm` crate, f32 activations.
    Dequant,
}

/// `out = x · wᵀ (+ bias)` for `m` rows of `x` (`m × w.cols()`), `out` `m × w.rows()`, with
/// [`DotKernel::Auto`].
///
/// # Panics
///
/// When a slice's length does not match the shapes.
pub fn linear(x: &[f32], m: usize, w: &QuantMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    linear_with(DotKernel::Auto, x, m, w, bias, out);
}

thread_local! {
    /// The calling thread's activation blocks, reused from call to call.
    static ACTS: RefCell<Vec<Q8Block>> = const { RefCell::new(Vec::new()) };
    /// The same as 16-bit codes for the tile.
    #[cfg(target_arch = "x86_64")]
    static ACTS16: RefCell<Vec<tile::A16Block>> = const { RefCell::new(Vec::new()) };
}

/// [`linear`] with the dot-product implementation chosen by the caller.
pub fn linear_with(
    kernel: DotKernel,
    x: &[f32],
    m: usize,
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "quant linear: x is not m × k");
    assert_eq!(out.len(), m * n, "quant linear: out is not m × n");
    assert!(
        bias.is_none_or(|b| b.len() == n),
        "quant linear: bias is not n"
    );
    if m == 0 || n == 0 {
        return;
    }
    let kernel = match kernel {
        DotKernel::Auto if m >= DEQUANT_MIN_M => DotKernel::Dequant,
        // Q8_0 codes are already bytes, which `maddubs` takes as they are; widening them to
        // 16 bits costs more than the tile saves until 16 rows (LM head, cpu_quant bench).
        DotKernel::Auto if w.format == QuantFormat::Q8_0 && m < TILE_Q8_0_MIN_M => {
            DotKernel::Maddubs
        }
        #[cfg(target_arch = "x86_64")]
        DotKernel::Auto
            if m == 1 && w.cols >= MADDUBS_M1_MIN_COLS && avx2::Avx2::has_kernel(w.format) =>
        {
            DotKernel::Maddubs
        }
        DotKernel::Auto => DotKernel::Integer,
        other => other,
    };
    if kernel == DotKernel::Dequant {
        return linear_dequant(x, m, w, bias, out);
    }
    let dot = Dot::resolve(kernel, w.format);
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acts) => run(dot, x, m, w, bias, &mut acts, out),
        // A re-entrant call on this thread (a rayon worker that picked up another engine's
        // step while it waited): use a buffer of its own.
        Err(_) => run(dot, x, m, w, bias, &mut Vec::new(), out),
    });
}

/// The dot product a call runs, its CPU features detected once per call.
#[derive(Clone, Copy)]
enum Dot {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Avx2),
    #[cfg(target_arch = "x86_64")]
    Tile(tile::Tile),
    #[cfg(target_arch = "aarch64")]
    Neon(neon::Neon),
}

impl Dot {
    fn resolve(kernel: DotKernel, format: QuantFormat) -> Dot {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            DotKernel::Auto | DotKernel::Integer => {
                tile::Tile::detect().map_or(Dot::Scalar, Dot::Tile)
            }
            #[cfg(target_arch = "x86_64")]
            DotKernel::Maddubs if avx2::Avx2::has_kernel(format) => {
                avx2::Avx2::detect().map_or(Dot::Scalar, Dot::Avx2)
            }
            // One kernel on aarch64 (Q4_0, Q4_1, Q8_0), whichever integer kernel is asked for.
            #[cfg(target_arch = "aarch64")]
            DotKernel::Auto | DotKernel::Integer | DotKernel::Maddubs
                if neon::Neon::has_kernel(format) =>
            {
                neon::Neon::detect().map_or(Dot::Scalar, Dot::Neon)
            }
            _ => Dot::Scalar,
        }
    }
}

/// Quantizes `x` into `acts` and runs the tasks.
fn run(
    dot: Dot,
    x: &[f32],
    m: usize,
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    acts: &mut Vec<Q8Block>,
    out: &mut [f32],
) {
    let nb = w.cols / BLOCK;
    acts.resize(m * nb, Q8Block::default());
    acts.par_chunks_mut(nb)
        .zip(x.par_chunks(w.cols))
        .with_min_len(16)
        .for_each(|(a, x)| quantize_row(x, a));
    let acts = &acts[..];
    #[cfg(target_arch = "x86_64")]
    if let Dot::Tile(t) = dot {
        return ACTS16.with(|cell| match cell.try_borrow_mut() {
            Ok(mut a16) => run_tile(t, acts, w, bias, &mut a16, m, out),
            Err(_) => run_tile(t, acts, w, bias, &mut Vec::new(), m, out),
        });
    }
    split(m, w, bias, out, |j0, pieces| {
        task_block(dot, w, acts, j0, pieces)
    });
}

/// The tile's tasks, on the activations converted to 16-bit codes in `a16`.
#[cfg(target_arch = "x86_64")]
fn run_tile(
    t: tile::Tile,
    acts: &[Q8Block],
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    a16: &mut Vec<tile::A16Block>,
    m: usize,
    out: &mut [f32],
) {
    a16.clear();
    a16.extend(acts.iter().map(tile::A16Block::from));
    let a16 = &a16[..];
    split(m, w, bias, out, |j0, pieces| {
        tile::task(t, w, a16, j0, pieces)
    });
}

/// One task: `pieces[i][jj] = acts[i] · w[j0 + jj]` for every activation row `i` (one piece
/// per row, all of one length), [`ROWS_PER_DOT`] rows at a time.
fn task_block(dot: Dot, w: &QuantMatrix, acts: &[Q8Block], j0: usize, pieces: &mut [&mut [f32]]) {
    let nb = w.cols / BLOCK;
    let width = pieces.first().map_or(0, |p| p.len());
    for (g, group) in pieces.chunks_mut(ROWS_PER_DOT).enumerate() {
        let i = g * ROWS_PER_DOT;
        let a = &acts[i * nb..(i + group.len()) * nb];
        for jj in 0..width {
            let mut dots = [0.0f32; ROWS_PER_DOT];
            dot_group(dot, w.format, w.row(j0 + jj), a, group.len(), &mut dots);
            for (piece, d) in group.iter_mut().zip(dots) {
                piece[jj] = d;
            }
        }
    }
}

/// `dots[r] = row · a[r·nb..(r+1)·nb]` for `r < group` (`group ≤ ROWS_PER_DOT`).
fn dot_group(
    dot: Dot,
    format: QuantFormat,
    row: &[u8],
    a: &[Q8Block],
    group: usize,
    dots: &mut [f32; ROWS_PER_DOT],
) {
    match dot {
        #[cfg(target_arch = "x86_64")]
        Dot::Avx2(avx2) => match group {
            1 => dots[..1].copy_from_slice(&avx2.dot_rows::<1>(format, row, a)),
            2 => dots[..2].copy_from_slice(&avx2.dot_rows::<2>(format, row, a)),
            3 => dots[..3].copy_from_slice(&avx2.dot_rows::<3>(format, row, a)),
            _ => *dots = avx2.dot_rows::<ROWS_PER_DOT>(format, row, a),
        },
        #[cfg(target_arch = "x86_64")]
        Dot::Tile(_) => unreachable!("the tile runs through run_tile"),
        #[cfg(target_arch = "aarch64")]
        Dot::Neon(neon) => match group {
            1 => dots[..1].copy_from_slice(&neon.dot_rows::<1>(format, row, a)),
            2 => dots[..2].copy_from_slice(&neon.dot_rows::<2>(format, row, a)),
            3 => dots[..3].copy_from_slice(&neon.dot_rows::<3>(format, row, a)),
            _ => *dots = neon.dot_rows::<ROWS_PER_DOT>(format, row, a),
        },
        Dot::Scalar => {
            let nb = a.len() / group;
            for (d, a) in dots.iter_mut().zip(a.chunks_exact(nb)) {
                *d = format.dot_scalar(row, a);
            }
        }
    }
}

#[cfg(test)]
mod tests;
