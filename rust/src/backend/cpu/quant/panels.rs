//! The panel path of the quantized linear layer (prefill, `m ≥` [`super::DEQUANT_MIN_M`]):
//! weights dequantized a panel at a time into a reused buffer and multiplied by the `gemm`
//! crate in f32, the activations unrounded.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{QuantMatrix, TASKS_PER_THREAD};
use crate::backend::cpu::matmul::gemm_into_columns;

/// Most weights dequantized at once (4 MiB of f32: a layer's matrix in one or two panels, the
/// LM head in slices, never a whole f32 copy of it).
const PANEL_ELEMENTS: usize = 1 << 20;

thread_local! {
    /// The calling thread's panel of dequantized weights, reused from call to call.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The panel path: `out = x · wᵀ (+ bias)` with `w` dequantized [`PANEL_ELEMENTS`] at a time.
pub(super) fn linear_dequant(
    x: &[f32],
    m: usize,
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    PANEL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut panel) => panels(x, m, w, &mut panel, out),
        // Re-entrant on this thread (see `linear_with`): a panel of its own.
        Err(_) => panels(x, m, w, &mut Vec::new(), out),
    });
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(w.rows) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
}

/// `out = x · wᵀ`, one panel of weight rows at a time, dequantized into `panel`.
fn panels(x: &[f32], m: usize, w: &QuantMatrix, panel: &mut Vec<f32>, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let panel_rows = (PANEL_ELEMENTS / k).clamp(1, n);
    panel.resize(panel_rows * k, 0.0);
    for j0 in (0..n).step_by(panel_rows) {
        let np = panel_rows.min(n - j0);
        let panel = &mut panel[..np * k];
        // In parallel: one thread dequantizing the LM head's 28 M weights took longer than
        // the GEMM that follows at m = 32 (cpu_quant bench, --crossover).
        let chunk_rows = np.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD);
        panel
            .par_chunks_mut(chunk_rows * k)
            .enumerate()
            .for_each(|(c, p)| w.dequantize_rows(j0 + c * chunk_rows, p));
        gemm_into_columns(x, m, panel, np, k, out, n, j0);
    }
}
