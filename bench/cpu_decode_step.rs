//! Where a decode step's time goes on the CPU: the projections of one SmolLM2-135M decode
//! step (30 layers × fused QKV, o_proj, fused gate/up, down in Q4_1, and the Q8_0 LM head:
//! 98 MB of blocks, random, cold as in a real step) run back to back from a worker of a rayon
//! pool, as the engine runs them, at 1 and at 2 threads; and the cost of an empty parallel
//! region (the pool's fork/join and wake-up alone), back to back and after a pause.
//!
//! Reading: the one-thread step is the sum of the kernels' work; the two-thread step minus
//! half of it is what splitting costs (wake-ups, waiting for the slower thread, and the
//! bandwidth two threads share).
//!
//! Run: `cargo bench --bench cpu_decode_step -- [--steps N]`. Times: min and median over
//! the steps (other jobs on a shared machine only ever add time).

use std::time::{Duration, Instant};

use infire::backend::cpu::quant::{linear, QuantFormat, QuantMatrix};
use infire::weights::RawTensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// (rows, cols) of one layer's projections, in the order a step runs them.
const LAYER: [(usize, usize); 4] = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
const LAYERS: usize = 30;
const VOCAB: usize = 49152;

fn matrix(rng: &mut StdRng, format: QuantFormat, n: usize, k: usize) -> QuantMatrix {
    let size = format.block_bytes();
    let mut bytes: Vec<u8> = (0..n * k / 32 * size).map(|_| rng.random()).collect();
    // Small finite f16 scales (and Q4_1 minimums) in every block.
    let scales: &[usize] = if format == QuantFormat::Q4_1 {
        &[0, 2]
    } else {
        &[0]
    };
    for b in bytes.chunks_exact_mut(size) {
        for &at in scales {
            let v = half::f16::from_f32(rng.random_range(0.002f32..0.06));
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    let shape = [n, k];
    let raw = RawTensor {
        dtype: format.ggml().name(),
        shape: &shape,
        bytes: &bytes,
    };
    QuantMatrix::from_raw(&[raw]).unwrap()
}

/// Min and median of `f`'s times over `n` calls, in µs.
fn min_median(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<f64> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[n / 2])
}

fn spin(d: Duration) {
    let s = Instant::now();
    while s.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(40);
    let mut rng = StdRng::seed_from_u64(18);
    let layers: Vec<Vec<QuantMatrix>> = (0..LAYERS)
        .map(|_| {
            LAYER
                .iter()
                .map(|&(n, k)| matrix(&mut rng, QuantFormat::Q4_1, n, k))
                .collect()
        })
        .collect();
    let head = matrix(&mut rng, QuantFormat::Q8_0, VOCAB, 576);
    let x: Vec<f32> = (0..1536).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut out = vec![0.0f32; VOCAB];
    println!("| threads | what | min µs | median µs |");
    println!("|---|---|---|---|");
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut step = || {
                for l in &layers {
                    for w in l {
                        linear(&x[..w.cols()], 1, w, None, &mut out[..w.rows()]);
                    }
                }
                linear(&x[..576], 1, &head, None, &mut out);
            };
            step();
            let (min, med) = min_median(steps, &mut step);
            println!("| {threads} | decode step, projections + LM head (121 calls) | {min:.0} | {med:.0} |");
            for (i, name) in ["qkv", "o_proj", "gate_up", "down"].iter().enumerate() {
                let mut at = 0;
                let (min, med) = min_median(steps * 10, || {
                    at = (at + 1) % LAYERS;
                    let w = &layers[at][i];
                    linear(&x[..w.cols()], 1, w, None, &mut out[..w.rows()]);
                });
                println!("| {threads} | one {name} (cold, next layer's each call) | {min:.1} | {med:.1} |");
            }
            let (min, med) = min_median(steps, || linear(&x[..576], 1, &head, None, &mut out));
            println!("| {threads} | LM head | {min:.0} | {med:.0} |");
            let mut sink = vec![0u64; 8];
            for (label, pause) in [("back to back", 0), ("after 50 µs of serial work", 50)] {
                // The pause (the helper thread idles meanwhile) stays outside the timer.
                let mut t: Vec<f64> = (0..steps * 50)
                    .map(|_| {
                        spin(Duration::from_micros(pause));
                        let s = Instant::now();
                        sink.par_iter_mut().for_each(|v| *v += 1);
                        s.elapsed().as_secs_f64() * 1e6
                    })
                    .collect();
                t.sort_by(f64::total_cmp);
                let n = t.len();
                println!(
                    "| {threads} | empty region of 8 tasks, {label} | {:.1} | {:.1} (p90 {:.1}) |",
                    t[0],
                    t[n / 2],
                    t[n * 9 / 10]
                );
            }
        });
    }
}
