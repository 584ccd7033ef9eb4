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
//! Each round runs every row twice, its parallel regions once on rayon and once on the
//! backend's spin pool (`spin_pool.rs`), the two alternating round after round.
//!
//! Run: `cargo bench --bench cpu_decode_step -- [--steps N] [--rounds N]`. Times: min and
//! median over the steps (other jobs on a shared machine only ever add time).

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use infire::backend::cpu::quant::{linear, QuantFormat, QuantMatrix};
use infire::backend::cpu::spin_pool;
use infire::weights::RawTensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// The two ways of running a region that the bench alternates.
const MODES: [(&str, bool); 2] = [("rayon", true), ("spin pool", false)];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let (steps, rounds) = (flag("--steps", 40), flag("--rounds", 3));
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
    println!("| threads | regions on | round | what | min µs | median µs |");
    println!("|---|---|---|---|---|---|");
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        // Rounds alternate the two modes so that a change in the machine's load hits both.
        // One thread runs every region inline either way.
        let modes = if threads == 1 {
            &MODES[..1]
        } else {
            &MODES[..]
        };
        for round in 0..rounds {
            for &(mode, rayon_only) in modes {
                spin_pool::use_rayon(rayon_only);
                let row = |what: &str, min: f64, med: String| {
                    println!("| {threads} | {mode} | {round} | {what} | {min:.1} | {med} |");
                };
                pool.install(|| measure(&layers, &head, &x, &mut out, steps, row));
            }
        }
    }
}

/// One round of every row in the current mode.
fn measure(
    layers: &[Vec<QuantMatrix>],
    head: &QuantMatrix,
    x: &[f32],
    out: &mut [f32],
    steps: usize,
    row: impl Fn(&str, f64, String),
) {
    // A real step has serial work between the products (norms, RoPE, attention's gather):
    // `gap` µs of it before each, so that idle helpers have time to fall asleep.
    for gap in [0, 5, 30] {
        let mut step = || {
            for l in layers {
                for w in l {
                    spin(Duration::from_micros(gap));
                    linear(&x[..w.cols()], 1, w, None, &mut out[..w.rows()]);
                }
            }
            linear(&x[..576], 1, head, None, out);
        };
        step();
        let (min, med) = min_median(steps, &mut step);
        let serial = 120.0 * gap as f64;
        let what = format!(
            "decode step, 121 calls, {gap} µs serial before each (minus the {serial:.0} µs)"
        );
        row(&what, min - serial, format!("{:.0}", med - serial));
    }
    for (i, name) in ["qkv", "o_proj", "gate_up", "down"].iter().enumerate() {
        let mut at = 0;
        let (min, med) = min_median(steps * 10, || {
            at = (at + 1) % LAYERS;
            let w = &layers[at][i];
            linear(&x[..w.cols()], 1, w, None, &mut out[..w.rows()]);
        });
        row(
            &format!("one {name} (cold, next layer's each call)"),
            min,
            format!("{med:.1}"),
        );
    }
    let (min, med) = min_median(steps, || linear(&x[..576], 1, head, None, out));
    row("LM head", min, format!("{med:.0}"));
    let sink: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
    for (label, pause) in [("back to back", 0), ("after 50 µs of serial work", 50)] {
        // The pause (the helpers idle meanwhile) stays outside the timer.
        let mut t: Vec<f64> = (0..steps * 50)
            .map(|_| {
                spin(Duration::from_micros(pause));
                let s = Instant::now();
                spin_pool::run(sink.len(), |i| {
                    sink[i].fetch_add(1, Ordering::Relaxed);
                });
                s.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        t.sort_by(f64::total_cmp);
        let n = t.len();
        let med = format!("{:.1} (p90 {:.1})", t[n / 2], t[n * 9 / 10]);
        row(&format!("empty region of 8 tasks, {label}"), t[0], med);
    }
}
