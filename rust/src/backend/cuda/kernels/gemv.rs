//! The GEMV kernels (`kernels/cuda/gemv.cu`): projections of one-row steps, with the input
//! norm, the SiLU·mul of gate/up and the residual add fused in, as their variants.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream};

use super::{launch_raw, param, Kernels};
use crate::backend::cuda::device_mem::cuda_err;
use crate::error::{Error, Result};

/// Threads of a GEMV CTA (`GEMV_THREADS` in gemv.cu).
const GEMV_THREADS: u32 = 256;

/// Most rows a step may have for its projections to run as GEMVs (`kernels/cuda/gemv.cu`)
/// rather than cuBLASLt GEMMs, and the row count the GEMV entry points are compiled for
/// (`_m1`): one (at 2-8 rows the GEMV lost to cuBLASLt; NOTES.md).
pub const GEMV_MAX_ROWS: usize = 1;
/// Output columns a GEMV CTA takes at a time (`GROUP` in gemv.cu): its columns per CTA are a
/// multiple of this.
const GEMV_GROUP: usize = 4;

/// Most rows the tensor-core FP8 GEMV (`kernels/cuda/gemv_fp8_mma.cu`, sm_89+) takes: the 8
/// columns of its mma's B operand.
pub const FP8_MMA_MAX_ROWS: usize = 8;
/// Rows of W a CTA of the tensor-core FP8 GEMV takes at a time (`TILE` in gemv_fp8_mma.cu).
const FP8_MMA_TILE: usize = 32;

/// Rows of W the reworked one-row FP8 GEMV (`kernels/cuda/gemv_fp8.cu`) takes at a time
/// (`FP8_GEMV_GROUP` there): its columns per CTA are a multiple of this.
const FP8_GEMV_GROUP: usize = 8;

/// Which FP8 GEMV a one-row step runs where both take the matrix: `INFIRE_FP8_GEMV=mma`,
/// `=plain` or `=v2` forces one (for same-run comparisons), anything else is
/// [`Fp8OneRow::Auto`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fp8OneRow {
    /// The tensor-core GEMV where its grid fills every SM's CTA slots, else gemv.cu's
    /// `*_fp8_m1`. Each kernel alone on an H100 (bench/gemv_fp8_bench.py, kernels/cuda/NOTES.md):
    /// with 128 or 192 tiles of 32 rows for 264 slots (o_proj, down, qkv of Llama-3-8B) the
    /// tensor-core one leaves SMs with one CTA of 8 warps and streams 53-63 % of the copy rate,
    /// `*_fp8_m1` (512 CTAs) 56-83 %; with 896 tiles (gate_up) it streams 83 % against 70 %.
    Auto,
    Mma,
    Plain,
    /// `kernels/cuda/gemv_fp8.cu` (`*_fp8v2_m1`) for every one-row FP8 projection: gemv.cu's
    /// sums, bit for bit, in ~40 % fewer instructions a weight byte (its header). Not the
    /// default until timed and tested on a GPU (bench/gemv_fp8_bench.py).
    V2,
}

impl Fp8OneRow {
    pub(super) fn from_env() -> Fp8OneRow {
        match std::env::var("INFIRE_FP8_GEMV").as_deref() {
            Ok("mma") => Fp8OneRow::Mma,
            Ok("plain") => Fp8OneRow::Plain,
            Ok("v2") => Fp8OneRow::V2,
            _ => Fp8OneRow::Auto,
        }
    }

    /// Whether one row through `n` rows of W runs on the tensor-core GEMV, which holds
    /// `ctas_per_sm` CTAs on each of `sm_count` SMs.
    fn mma(self, n: usize, ctas_per_sm: usize, sm_count: usize) -> bool {
        match self {
            Fp8OneRow::Mma => true,
            Fp8OneRow::Plain | Fp8OneRow::V2 => false,
            Fp8OneRow::Auto => n.div_ceil(FP8_MMA_TILE) >= sm_count * ctas_per_sm,
        }
    }
}

/// How a GEMV reads its input (see `kernels/cuda/gemv.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvInput {
    /// As is.
    Plain,
    /// RMS-normalized and scaled by a norm weight.
    Norm,
}

/// What a GEMV does with its sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvOutput {
    /// Rounded to the activation dtype (plus the bias, if any).
    Store,
    /// As f32 (plus the bias, if any): logits.
    F32,
    /// Rounded and added into the output (the residual stream).
    Add,
    /// `silu(gate) * up` of the two halves of a fused gate/up matrix (`n / 2` outputs).
    Silu,
}

/// The GEMV entry points gemv.cu defines, in the order of [`Kernels::gemv`].
pub(super) const GEMV_VARIANTS: [(GemvInput, GemvOutput); 6] = [
    (GemvInput::Plain, GemvOutput::Store),
    (GemvInput::Plain, GemvOutput::F32),
    (GemvInput::Plain, GemvOutput::Add),
    (GemvInput::Norm, GemvOutput::Store),
    (GemvInput::Norm, GemvOutput::F32),
    (GemvInput::Norm, GemvOutput::Silu),
];

/// How an FP8 matrix's f32 scales map to its weights (`kernels/cuda/gemv.cu`, `fp8.cu`): the
/// scale of weight `(r, c)` is `scales[(r >> row_shift) * ld + (c >> col_shift)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Layout {
    /// Device address of the scales.
    pub scales: u64,
    pub row_shift: i32,
    pub col_shift: i32,
    pub ld: i32,
}

/// `gemv_<input>_<output>`: the part every GEMV entry point's name starts with.
fn gemv_stem(input: GemvInput, output: GemvOutput) -> String {
    let i = match input {
        GemvInput::Plain => "plain",
        GemvInput::Norm => "norm",
    };
    let o = match output {
        GemvOutput::Store => "store",
        GemvOutput::F32 => "f32",
        GemvOutput::Add => "add",
        GemvOutput::Silu => "silu",
    };
    format!("gemv_{i}_{o}")
}

/// The GEMV entry point of `(input, output)`, for bf16/f16 weights or (`fp8`) FP8 weights.
pub(super) fn gemv_name(input: GemvInput, output: GemvOutput, fp8: bool) -> String {
    let w = if fp8 { "_fp8" } else { "" };
    format!("{}{w}_m{GEMV_MAX_ROWS}", gemv_stem(input, output))
}

/// The reworked one-row FP8 GEMV's entry point of `(input, output)` (`gemv_fp8.cu`).
pub(super) fn gemv_fp8_v2_name(input: GemvInput, output: GemvOutput) -> String {
    format!("{}_fp8v2_m1", gemv_stem(input, output))
}

/// The tensor-core FP8 GEMV's entry point of `(input, output)`.
pub(super) fn gemv_fp8_mma_name(input: GemvInput, output: GemvOutput) -> String {
    format!("{}_fp8mma", gemv_stem(input, output))
}

/// Whether the tensor-core FP8 GEMV takes a matrix of `k` columns with scales `layout`: k in
/// whole 64-column chunks, none straddling a scale block (gemv_fp8_mma.cu). Others run on
/// gemv.cu's `*_fp8_m1` (one row) or the FP8 GEMM (more).
pub fn fp8_mma_fits(k: usize, layout: &Fp8Layout) -> bool {
    k.is_multiple_of(64) && layout.col_shift >= 6
}

/// Columns per CTA of an `n`-column GEMV: a multiple of `group` (the columns a CTA takes at a
/// time), as few as let the whole grid be resident at once (`ctas_per_sm` on each of
/// `sm_count` SMs), so that it runs in one wave with every CTA streaming the same number of
/// weight bytes.
fn gemv_cols_per_cta(n: usize, group: usize, sm_count: usize, ctas_per_sm: usize) -> usize {
    group * n.div_ceil(group * sm_count * ctas_per_sm).max(1)
}

/// A GEMV entry point and how many of its CTAs an SM holds.
pub(super) struct GemvKernel {
    func: CudaFunction,
    ctas_per_sm: usize,
}

impl GemvKernel {
    pub(super) fn new(func: CudaFunction) -> Result<GemvKernel> {
        let ctas_per_sm = func
            .occupancy_max_active_blocks_per_multiprocessor(GEMV_THREADS, 0, None)
            .map_err(cuda_err)?
            .max(1) as usize;
        Ok(GemvKernel { func, ctas_per_sm })
    }

    /// Grid and columns per CTA for the launch `a`, `group` columns at a time: as many CTAs
    /// as the GPU holds at once.
    fn grid(&self, a: &GemvArgs, group: usize, sm_count: usize) -> ((usize, usize, usize), i32) {
        let cols = gemv_cols_per_cta(a.n, group, sm_count, self.ctas_per_sm);
        ((a.n.div_ceil(cols), 1, 1), cols as i32)
    }
}

/// The arguments of one GEMV launch (device addresses; 0 for an absent norm weight or bias).
pub struct GemvArgs {
    pub input: GemvInput,
    pub output: GemvOutput,
    pub rows: usize,
    /// `[n, k]` weight.
    pub w: u64,
    /// The scales of an FP8 weight (`None`: the weight is in the activation dtype).
    pub fp8: Option<Fp8Layout>,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub norm_w: u64,
    pub bias: u64,
    pub out: u64,
    pub eps: f32,
}

impl Kernels {
    /// One projection on the GEMV kernels: at most [`GEMV_MAX_ROWS`] rows, or with an FP8
    /// matrix that [`fp8_mma_fits`] on a GPU that has the tensor-core FP8 GEMV, at most
    /// [`FP8_MMA_MAX_ROWS`]; `a.k` is a multiple of 8 (16-byte vectors) and the buffers hold
    /// `a.rows` rows.
    pub fn gemv(&self, stream: &Arc<CudaStream>, a: &GemvArgs, sm_count: usize) -> Result<()> {
        let variant = GEMV_VARIANTS
            .iter()
            .position(|&v| v == (a.input, a.output))
            .expect("every (input, output) pair the backend asks for is compiled");
        let mma = match (&self.gemv_fp8_mma, &a.fp8) {
            (Some(kernels), Some(l)) if fp8_mma_fits(a.k, l) => {
                let kernel = &kernels[variant];
                let plain = a.rows == 1 && !self.fp8_one_row.mma(a.n, kernel.ctas_per_sm, sm_count);
                (!plain).then_some(kernel)
            }
            _ => None,
        };
        let max_rows = if mma.is_some() {
            FP8_MMA_MAX_ROWS
        } else {
            GEMV_MAX_ROWS
        };
        if a.rows > max_rows {
            return Err(Error::Engine(format!("GEMV of {} rows", a.rows)));
        }
        let (w, x, norm_w, bias, out, eps) = (a.w, a.x, a.norm_w, a.bias, a.out, a.eps);
        let (rows, n, k) = (a.rows as i32, a.n as i32, a.k as i32);
        match a.fp8 {
            None => {
                let kernel = &self.gemv[variant];
                let (grid, cols) = kernel.grid(a, GEMV_GROUP, sm_count);
                launch!(self, stream, &kernel.func, grid, GEMV_THREADS;
                    w, x, norm_w, bias, out, rows, n, k, cols, eps)
            }
            Some(l) => {
                let (kernel, group) = match (mma, &self.gemv_fp8_v2) {
                    (Some(kernel), _) => (kernel, FP8_MMA_TILE),
                    (None, Some(v2)) if a.rows == 1 => (&v2[variant], FP8_GEMV_GROUP),
                    (None, _) => (&self.gemv_fp8[variant], GEMV_GROUP),
                };
                let (grid, cols) = kernel.grid(a, group, sm_count);
                let (scales, row_shift, col_shift, ld) = (l.scales, l.row_shift, l.col_shift, l.ld);
                launch!(self, stream, &kernel.func, grid, GEMV_THREADS;
                    w, scales, row_shift, col_shift, ld, x, norm_w, bias, out, rows, n, k, cols,
                    eps)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_entry_points_are_named_as_gemv_cu_defines_them() {
        let names: Vec<_> = GEMV_VARIANTS
            .iter()
            .map(|&(i, o)| gemv_name(i, o, false))
            .collect();
        assert_eq!(
            names,
            [
                "gemv_plain_store_m1",
                "gemv_plain_f32_m1",
                "gemv_plain_add_m1",
                "gemv_norm_store_m1",
                "gemv_norm_f32_m1",
                "gemv_norm_silu_m1",
            ]
        );
        let source = crate::backend::cuda::jit::source("gemv").unwrap();
        for name in &names {
            let (stem, _) = name.rsplit_once("_m").unwrap();
            assert!(source.contains(&format!("GEMV_ENTRY({stem},")), "{name}");
        }
        // The FP8 entry points: the same stems, `NAME##_fp8_m1` in the macro.
        assert!(source.contains("NAME##_fp8_m1("));
        let (i, o) = GEMV_VARIANTS[5];
        assert_eq!(gemv_name(i, o, true), "gemv_norm_silu_fp8_m1");
    }

    #[test]
    fn the_fp8_mma_entry_points_are_named_as_gemv_fp8_mma_cu_defines_them() {
        let source = crate::backend::cuda::jit::source("gemv_fp8_mma").unwrap();
        assert!(source.contains("NAME##_fp8mma("));
        for &(i, o) in &GEMV_VARIANTS {
            let name = gemv_fp8_mma_name(i, o);
            let stem = name.strip_suffix("_fp8mma").unwrap();
            assert!(
                source.contains(&format!("GEMV_FP8_MMA_ENTRY({stem},")),
                "{name}"
            );
        }
        let (i, o) = GEMV_VARIANTS[5];
        assert_eq!(gemv_fp8_mma_name(i, o), "gemv_norm_silu_fp8mma");
        assert!(source.contains(&format!("constexpr int MMA_ROWS = {FP8_MMA_MAX_ROWS};")));
        assert!(source.contains("constexpr int TILE = 16 * MT;"));
        assert!(source.contains("constexpr int MT = FP8_MMA_MT;"));
        assert!(source.contains(&format!("#define FP8_MMA_MT {}\n", FP8_MMA_TILE / 16)));
    }

    #[test]
    fn the_fp8_v2_entry_points_are_named_as_gemv_fp8_cu_defines_them() {
        let source = crate::backend::cuda::jit::source("gemv_fp8").unwrap();
        assert!(source.contains("NAME##_fp8v2_m1("));
        for &(i, o) in &GEMV_VARIANTS {
            let name = gemv_fp8_v2_name(i, o);
            let stem = name.strip_suffix("_fp8v2_m1").unwrap();
            assert!(
                source.contains(&format!("GEMV_FP8_ENTRY({stem},")),
                "{name}"
            );
        }
        let (i, o) = GEMV_VARIANTS[5];
        assert_eq!(gemv_fp8_v2_name(i, o), "gemv_norm_silu_fp8v2_m1");
        assert!(source.contains(&format!("#define FP8_GEMV_GROUP {FP8_GEMV_GROUP}\n")));
        assert!(source.contains("constexpr int FG = FP8_GEMV_GROUP;"));
    }

    #[test]
    fn one_row_takes_the_tensor_core_fp8_gemv_where_its_grid_fills_the_gpu() {
        // Llama-3-8B on 132 SMs at 2 CTAs an SM: 264 slots.
        let auto = Fp8OneRow::Auto;
        assert!(!auto.mma(6144, 2, 132)); // qkv: 192 tiles
        assert!(!auto.mma(4096, 2, 132)); // o_proj, down: 128
        assert!(auto.mma(28672, 2, 132)); // gate_up: 896
        assert!(auto.mma(8448, 2, 132)); // exactly 264
        assert!(!auto.mma(8416, 1, 264)); // 263
        assert!(Fp8OneRow::Mma.mma(4096, 2, 132));
        assert!(!Fp8OneRow::Plain.mma(28672, 2, 132));
        assert!(!Fp8OneRow::V2.mma(28672, 2, 132));
    }

    #[test]
    fn the_fp8_mma_gemv_takes_whole_chunks_inside_scale_blocks() {
        let layout = |col_shift| Fp8Layout {
            scales: 0,
            row_shift: 0,
            col_shift,
            ld: 1,
        };
        assert!(fp8_mma_fits(4096, &layout(31)));
        assert!(fp8_mma_fits(14336, &layout(7)));
        assert!(fp8_mma_fits(64, &layout(6)));
        assert!(!fp8_mma_fits(2064, &layout(31)));
        assert!(!fp8_mma_fits(4096, &layout(5)));
    }

    #[test]
    fn gemv_grids_fit_the_gpu_in_one_wave() {
        // 132 SMs x 4 CTAs = 528 resident CTAs (the FP8 mma GEMV: 2 a SM, 264).
        for (group, ctas_per_sm) in [(GEMV_GROUP, 4), (FP8_MMA_TILE, 2), (FP8_GEMV_GROUP, 3)] {
            let resident = 132 * ctas_per_sm;
            for n in [37, 4096, 6144, 28672, 128256] {
                let cols = gemv_cols_per_cta(n, group, 132, ctas_per_sm);
                assert_eq!(cols % group, 0);
                let ctas = n.div_ceil(cols);
                assert!(ctas <= resident, "n = {n}: {ctas} CTAs");
                // And no fewer columns per CTA would do.
                assert!(cols == group || n.div_ceil(cols - group) > resident);
            }
        }
        assert_eq!(gemv_cols_per_cta(4096, GEMV_GROUP, 132, 4), 8);
        assert_eq!(gemv_cols_per_cta(37, GEMV_GROUP, 132, 4), 4);
        assert_eq!(gemv_cols_per_cta(28672, FP8_MMA_TILE, 132, 2), 128);
    }
}
