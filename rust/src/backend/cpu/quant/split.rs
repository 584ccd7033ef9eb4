//! The split of a quantized linear layer's output columns into rayon tasks.

use rayon::prelude::*;

use super::{QuantMatrix, MIN_TASK_WEIGHT_BYTES, TASKS_PER_THREAD};

/// Splits the output columns into rayon tasks, each `block(j0, pieces)` for columns
/// `j0..j0 + pieces[i].len()` of every row `i`, plus the bias.
pub(super) fn split(
    m: usize,
    w: &QuantMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
    block: impl Fn(usize, &mut [&mut [f32]]) + Sync,
) {
    let n = w.rows;
    let cols = task_rows(n, w.row_bytes());
    let task = |j0: usize, pieces: &mut [&mut [f32]]| {
        block(j0, pieces);
        if let Some(b) = bias {
            for p in pieces.iter_mut() {
                p.iter_mut().zip(&b[j0..]).for_each(|(o, b)| *o += b);
            }
        }
    };
    if m == 1 {
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(t, piece)| task(t * cols, &mut [piece]));
        return;
    }
    // Each task owns columns [j0, j0 + cols) of every output row: gather those row pieces.
    let mut per_task: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(cols))
        .map(|_| Vec::with_capacity(m))
        .collect();
    for row in out.chunks_exact_mut(n) {
        for (t, piece) in row.chunks_mut(cols).enumerate() {
            per_task[t].push(piece);
        }
    }
    per_task
        .into_par_iter()
        .enumerate()
        .for_each(|(t, mut pieces)| task(t * cols, &mut pieces));
}

/// Weight rows per rayon task: at least [`MIN_TASK_WEIGHT_BYTES`] of weights, about
/// [`TASKS_PER_THREAD`] tasks per pool thread.
fn task_rows(n: usize, row_bytes: usize) -> usize {
    let min_rows = MIN_TASK_WEIGHT_BYTES.div_ceil(row_bytes.max(1));
    let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
    n.div_ceil(tasks).max(min_rows).clamp(1, n)
}
