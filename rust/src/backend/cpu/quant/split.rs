//! The split of a quantized linear layer's output columns into the tasks of a parallel region.

use std::sync::Mutex;

use super::{QuantMatrix, MIN_TASK_WEIGHT_BYTES, TASKS_PER_THREAD};
use crate::backend::cpu::spin_pool;

/// Splits the output columns into tasks of the caller's [`spin_pool`], each `block(j0, pieces)` for columns
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
    // Each task owns columns [j0, j0 + cols) of every output row: gather those row pieces.
    // (The locks are never contended: one task takes each, once.)
    let mut per_task: Vec<Mutex<Vec<&mut [f32]>>> = (0..n.div_ceil(cols))
        .map(|_| Mutex::new(Vec::with_capacity(m)))
        .collect();
    for row in out.chunks_exact_mut(n) {
        for (t, piece) in row.chunks_mut(cols).enumerate() {
            per_task[t].get_mut().expect("not shared yet").push(piece);
        }
    }
    spin_pool::run(per_task.len(), |t| {
        let mut pieces = per_task[t].lock().expect("a task panicked");
        task(t * cols, &mut pieces)
    });
}

/// Weight rows per task: tasks of at least [`MIN_TASK_WEIGHT_BYTES`] of weights, at
/// most [`TASKS_PER_THREAD`] per pool thread, and a whole number of them per thread, all of
/// one size but the last, so that every thread gets the same rows. (Rows rounded up from the
/// smallest task size left remainders: SmolLM2's 576-row `o_proj` in Q4_1 went as 3 × 183 + 27
/// rows, 64 % of them on one of two threads.)
fn task_rows(n: usize, row_bytes: usize) -> usize {
    task_rows_for(n, row_bytes, rayon::current_num_threads())
}

fn task_rows_for(n: usize, row_bytes: usize, threads: usize) -> usize {
    let most = (n * row_bytes / MIN_TASK_WEIGHT_BYTES).clamp(1, threads * TASKS_PER_THREAD);
    let tasks = if most >= threads {
        most / threads * threads
    } else {
        most
    };
    n.div_ceil(tasks).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_gets_the_same_rows() {
        // SmolLM2-135M in Q4_1 (360 bytes a row of 576, 960 of 1536) and its Q8_0 LM head.
        for (n, row_bytes) in [
            (576, 360),
            (960, 360),
            (3072, 360),
            (576, 960),
            (49152, 612),
        ] {
            for threads in [1, 2, 3, 4, 8] {
                let rows = task_rows_for(n, row_bytes, threads);
                let tasks = n.div_ceil(rows);
                assert!(rows * row_bytes >= MIN_TASK_WEIGHT_BYTES.min(n * row_bytes / threads));
                assert!(
                    tasks <= threads * TASKS_PER_THREAD,
                    "{n} rows, {threads} threads"
                );
                if n * row_bytes >= threads * MIN_TASK_WEIGHT_BYTES {
                    assert_eq!(
                        tasks % threads,
                        0,
                        "{n} rows, {threads} threads: {tasks} tasks"
                    );
                }
            }
        }
        assert_eq!(task_rows_for(576, 360, 2), 288);
        assert_eq!(task_rows_for(960, 360, 2), 240);
        assert_eq!(task_rows_for(3, 360, 2), 3, "a tiny matrix is one task");
    }
}
