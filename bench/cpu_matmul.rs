//! Benchmark of the CPU backend's linear layer (`infire::backend::cpu::matmul`), llm.c style:
//! the machine's memory-read ceiling first, then every version checked against the f64
//! reference and timed per shape, then one whole SmolLM2-135M decode step's matmuls.
//!
//! Run: `cargo bench --bench cpu_matmul -- [--quick | --decode-only | --ceiling-only] [--json PATH]`.
//! Weights are "cold": each timed call reads a different copy of `w`, and the copies add up to
//! more than [`COLD_BYTES`], so the last-level cache cannot hold them (as in a real decode step,
//! where ~540 MB of weights stream past). GB/s counts the bytes of `w` only.

use std::time::{Duration, Instant};

use infire::backend::cpu::matmul::{self, Kernel};
use rayon::prelude::*;

/// Bytes the rotating weight copies add up to: several times this machine's 32 MiB L3.
const COLD_BYTES: usize = 256 << 20;

/// Bytes summed by the memory-read ceiling measurement.
const CEILING_BYTES: usize = 1 << 30;

/// Minimum time spent timing one configuration.
const MIN_TIME: Duration = Duration::from_millis(300);

/// SmolLM2-135M hidden size.
const HIDDEN: usize = 576;
/// SmolLM2-135M MLP width.
const INTERMEDIATE: usize = 1536;
/// Width of the K and V projections: 3 KV heads of 64.
const KV_DIM: usize = 3 * 64;
/// Decoder layers.
const LAYERS: usize = 30;

/// Vocabulary rows of the tied LM head.
const VOCAB: usize = 49152;

/// The versions compared.
#[derive(Clone, Copy, Debug)]
enum Version {
    /// A kernel of the product, through `matmul::linear_with`.
    Product(Kernel),
    /// The bench-only auto-vectorized tile (see [`autovec`]).
    Autovec,
}

/// Prints the three tables (ceiling, per shape, decode step) and writes the JSON file if asked.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let decode_only = args.iter().any(|a| a == "--decode-only");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    let mut json = Vec::new();

    println!(
        "# CPU linear layer; {} rayon threads",
        rayon::current_num_threads()
    );
    ceiling(&mut json);
    if args.iter().any(|a| a == "--ceiling-only") {
        // For scripts (bench/cpu_vs_llamacpp.py): the ceiling's JSON rows on stdout.
        json.iter().for_each(|row| println!("{row}"));
        return;
    }
    let ms: &[usize] = match (decode_only, quick) {
        (true, _) => &[],
        (false, true) => &[1, 4, 16],
        (false, false) => &[1, 2, 4, 8, 16, 32, 64, 128, 512],
    };
    shapes(ms, &mut json);
    decode(&mut json);

    if let Some(path) = json_path {
        let text = format!("[\n{}\n]\n", json.join(",\n"));
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}

/// The memory-read ceiling with 1 and 2 threads.
fn ceiling(json: &mut Vec<String>) {
    println!(
        "\n## memory-read ceiling (sum of a {} MiB f32 array)",
        CEILING_BYTES >> 20
    );
    let data = random_vec(CEILING_BYTES / 4, 1);
    for threads in [1, 2] {
        let gbs = read_bandwidth(&data, threads);
        println!("{threads} thread(s): {gbs:6.1} GB/s");
        json.push(format!(
            "{{\"what\":\"read_ceiling\",\"threads\":{threads},\"gb_s\":{gbs:.2}}}"
        ));
    }
}

/// Every version on every SmolLM2-135M weight shape for each `m` in `ms`: checked against the
/// f64 reference (output poisoned with NaN first), then timed on cold weights.
fn shapes(ms: &[usize], json: &mut Vec<String>) {
    let versions = [
        Version::Product(Kernel::TiledPortable),
        Version::Autovec,
        Version::Product(Kernel::TiledAvx2Fma),
        Version::Product(Kernel::Gemm),
        Version::Product(Kernel::Auto),
    ];
    let shapes = [
        (HIDDEN, HIDDEN),
        (INTERMEDIATE, HIDDEN),
        (HIDDEN, INTERMEDIATE),
        (HIDDEN + 2 * KV_DIM, HIDDEN),
        (2 * INTERMEDIATE, HIDDEN),
        (VOCAB, HIDDEN),
    ];
    println!("\n## per shape, cold weights: time per call, GB/s of weights, GFLOP/s");
    println!("| n | k | m | version | µs | GB/s | GFLOP/s | max rel err |");
    println!("|---|---|---|---|---|---|---|---|");
    for &(n, k) in shapes.iter().filter(|_| !ms.is_empty()) {
        let copies = COLD_BYTES.div_ceil(n * k * 4).max(2);
        let ws: Vec<Vec<f32>> = (0..copies)
            .map(|c| random_vec(n * k, 10 + c as u64))
            .collect();
        let bias = random_vec(n, 3);
        for &m in ms {
            let x = random_vec(m * k, 4);
            let mut want = vec![0.0; m * n];
            matmul::linear_reference(&x, m, &ws[0], n, k, Some(&bias), &mut want);
            for &v in &versions {
                let slow = matches!(
                    v,
                    Version::Product(Kernel::TiledPortable) | Version::Autovec
                );
                if slow && m * n * k > 500_000_000 {
                    continue; // seconds per call and nothing to learn
                }
                let mut out = vec![f32::NAN; m * n];
                run(v, &x, m, &ws[0], n, k, Some(&bias), &mut out);
                let err = max_rel_err(&out, &want, &x, &ws[0], m, n, k);
                let mut c = 0;
                let secs = time(|| {
                    c = (c + 1) % copies;
                    run(v, &x, m, &ws[c], n, k, Some(&bias), &mut out);
                });
                let gbs = (n * k * 4) as f64 / secs / 1e9;
                let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
                println!(
                    "| {n} | {k} | {m} | {} | {:.1} | {gbs:.1} | {gflops:.1} | {err:.1e} |",
                    name(v),
                    secs * 1e6
                );
                json.push(format!(
                    "{{\"what\":\"linear\",\"n\":{n},\"k\":{k},\"m\":{m},\"version\":\"{}\",\
                     \"us\":{:.2},\"gb_s\":{gbs:.2},\"gflop_s\":{gflops:.2},\"max_rel_err\":{err:.3e}}}",
                    name(v),
                    secs * 1e6
                ));
            }
        }
    }
}

/// One whole SmolLM2-135M decode step's matmuls, separate and fused layouts, m = 1, 4, 16,
/// called from a pool worker and from outside the pool.
fn decode(json: &mut Vec<String>) {
    println!("\n## SmolLM2-135M decode step: all matmuls of 30 layers + LM head, Kernel::Auto");
    println!("Caller: `pool` runs the step on a rayon worker (as the engine should), `outside`");
    println!("calls from a non-pool thread, so every linear call is injected into the pool.");
    println!("| layout | caller | m | ms per step | tokens/s | GB/s |");
    println!("|---|---|---|---|---|---|");
    for fused in [false, true] {
        let model = Model::new(fused);
        for &m in &[1, 4, 16] {
            let x = vec![0.5f32; m * INTERMEDIATE];
            let mut out = vec![0.0f32; m * VOCAB];
            for in_pool in [true, false] {
                let secs = match in_pool {
                    true => time(|| rayon::scope(|_| model.step(m, &x, &mut out))),
                    false => time(|| model.step(m, &x, &mut out)),
                };
                let gbs = model.bytes() as f64 / secs / 1e9;
                let toks = m as f64 / secs;
                let layout = if fused {
                    "fused qkv, gate_up"
                } else {
                    "separate"
                };
                let caller = if in_pool { "pool" } else { "outside" };
                println!(
                    "| {layout} | {caller} | {m} | {:.2} | {toks:.1} | {gbs:.1} |",
                    secs * 1e3
                );
                json.push(format!(
                    "{{\"what\":\"smollm2_decode\",\"fused\":{fused},\"caller\":\"{caller}\",\
                     \"m\":{m},\"ms\":{:.3},\"tokens_s\":{toks:.2},\"gb_s\":{gbs:.2}}}",
                    secs * 1e3
                ));
            }
        }
    }
}

/// The name printed for a version.
fn name(v: Version) -> &'static str {
    match v {
        Version::Product(Kernel::Auto) => "auto",
        Version::Product(Kernel::TiledPortable) => "tiled-portable",
        Version::Product(Kernel::TiledAvx2Fma) => "tiled-avx2fma",
        Version::Product(Kernel::Gemm) => "gemm",
        Version::Autovec => "autovec-avx2fma",
    }
}

/// Runs one version.
#[allow(clippy::too_many_arguments)]
fn run(
    v: Version,
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    match v {
        Version::Product(kernel) => matmul::linear_with(kernel, x, m, w, n, k, bias, out),
        Version::Autovec => autovec::linear(x, m, w, n, k, bias, out),
    }
}

/// Fastest seconds per call of `f`, after one warm-up call, over at least [`MIN_TIME`] and 5
/// calls. The minimum, not the median: on a shared build machine other jobs only ever add time.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    let mut calls = 0;
    let start = Instant::now();
    while calls < 5 || start.elapsed() < MIN_TIME {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        calls += 1;
    }
    best
}

/// Best-of-5 GB/s for summing `data` on a pool of `threads` threads.
fn read_bandwidth(data: &[f32], threads: usize) -> f64 {
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot build a {threads}-thread pool: {e}");
            std::process::exit(1);
        }
    };
    let mut best = f64::MAX;
    let mut total = 0.0;
    for _ in 0..5 {
        let t = Instant::now();
        total += pool.install(|| data.par_chunks(1 << 20).map(sum).sum::<f32>());
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(total);
    std::mem::size_of_val(data) as f64 / best / 1e9
}

/// Sum of `v`: AVX2 with four independent accumulators where the CPU has it, so the loop is
/// limited by memory, not by add latency; 16 scalar lanes elsewhere.
fn sum(v: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { sum_avx2(v) };
    }
    let mut acc = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`sum`] with AVX2 loads, 32 floats per iteration.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(v: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let chunks = v.chunks_exact(32);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(c[8 * j..8 * j + 8].as_ptr()));
        }
    }
    let mut lanes = [0.0f32; 8];
    let total = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    _mm256_storeu_ps(lanes.as_mut_ptr(), total);
    lanes.iter().sum::<f32>() + tail
}

/// Largest `|out − want| / (‖x_i‖·‖w_j‖)` over all elements: the error relative to the
/// Cauchy–Schwarz bound of the dot product, which is what f32 rounding scales with.
fn max_rel_err(
    out: &[f32],
    want: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> f64 {
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&a| f64::from(a) * f64::from(a))
            .sum::<f64>()
            .sqrt()
    };
    let wn: Vec<f64> = (0..n).map(|j| norm(&w[j * k..(j + 1) * k])).collect();
    let mut worst = 0.0f64;
    for i in 0..m {
        let xn = norm(&x[i * k..(i + 1) * k]);
        for j in 0..n {
            let d = (f64::from(out[i * n + j]) - f64::from(want[i * n + j])).abs();
            let e = if d.is_nan() {
                f64::INFINITY
            } else {
                d / (xn * wn[j]).max(1e-30)
            };
            worst = worst.max(e);
        }
    }
    worst
}

/// `len` uniform values in [-1, 1) from a fixed seed (xorshift64*; the values only need to be
/// reproducible, not good).
fn random_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The weights of every matmul in SmolLM2-135M, allocated for real so that a step streams them
/// all from memory.
struct Model {
    /// `(n, k, w)` per matmul, in forward order; the LM head last.
    mats: Vec<(usize, usize, Vec<f32>)>,
}

impl Model {
    /// All 30 layers' projections (q, k, v, o, gate, up, down, or fused qkv and gate_up) and the
    /// 49,152 × 576 LM head.
    fn new(fused: bool) -> Self {
        let layer: Vec<(usize, usize)> = if fused {
            vec![
                (HIDDEN + 2 * KV_DIM, HIDDEN),
                (HIDDEN, HIDDEN),
                (2 * INTERMEDIATE, HIDDEN),
                (HIDDEN, INTERMEDIATE),
            ]
        } else {
            vec![
                (HIDDEN, HIDDEN),
                (KV_DIM, HIDDEN),
                (KV_DIM, HIDDEN),
                (HIDDEN, HIDDEN),
                (INTERMEDIATE, HIDDEN),
                (INTERMEDIATE, HIDDEN),
                (HIDDEN, INTERMEDIATE),
            ]
        };
        let mut mats = Vec::new();
        for l in 0..LAYERS {
            for (i, &(n, k)) in layer.iter().enumerate() {
                mats.push((n, k, random_vec(n * k, (100 * l + i) as u64)));
            }
        }
        mats.push((VOCAB, HIDDEN, random_vec(VOCAB * HIDDEN, 7)));
        Model { mats }
    }

    /// Bytes of weights one step reads.
    fn bytes(&self) -> usize {
        self.mats.iter().map(|(_, _, w)| w.len() * 4).sum()
    }

    /// One decode step for `m` sequences: every matmul once, reading `x` (at least
    /// `m × INTERMEDIATE`) and writing `out` (at least `m × VOCAB`); the values do not matter.
    fn step(&self, m: usize, x: &[f32], out: &mut [f32]) {
        for (n, k, w) in &self.mats {
            matmul::linear(&x[..m * k], m, w, *n, *k, None, &mut out[..m * n]);
        }
        std::hint::black_box(out);
    }
}

/// Bench-only version: the product's portable tile (safe Rust, 8-lane accumulator arrays)
/// compiled with AVX2+FMA enabled and `mul_add`, same tiling and parallel split, to measure what
/// the auto-vectorizer makes of it next to the product's intrinsics.
mod autovec {
    // Elsewhere than x86-64 the version falls back to the product's portable tile.
    #![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
    use rayon::prelude::*;

    /// Weight rows and `x` rows per tile, as in the product.
    const R: usize = 4;
    const C: usize = 3;

    /// Same contract as `matmul::linear`; the product's portable path on CPUs without AVX2/FMA.
    pub fn linear(
        x: &[f32],
        m: usize,
        w: &[f32],
        n: usize,
        k: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let tasks = rayon::current_num_threads() * 4;
            let cols = n
                .div_ceil(tasks)
                .max((64 << 10) / (4 * k.max(1)))
                .min(n)
                .next_multiple_of(R);
            let mut per_block: Vec<Vec<&mut [f32]>> =
                (0..n.div_ceil(cols)).map(|_| Vec::new()).collect();
            for row in out.chunks_exact_mut(n) {
                for (b, piece) in row.chunks_mut(cols).enumerate() {
                    per_block[b].push(piece);
                }
            }
            per_block
                .into_par_iter()
                .enumerate()
                .for_each(|(b, mut pieces)| {
                    let (j0, jn) = (b * cols, pieces[0].len());
                    let (wb, bb) = (&w[j0 * k..(j0 + jn) * k], bias.map(|b| &b[j0..j0 + jn]));
                    // SAFETY: AVX2 and FMA were detected above.
                    unsafe { block(x, wb, k, bb, &mut pieces) };
                });
            return;
        }
        super::matmul::linear_with(super::Kernel::TiledPortable, x, m, w, n, k, bias, out);
    }

    /// One block of weight rows against all rows of `x`, tiles of R × C.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block(x: &[f32], w: &[f32], k: usize, bias: Option<&[f32]>, out: &mut [&mut [f32]]) {
        let m = out.len();
        let jn = out[0].len();
        for j in (0..jn).step_by(R) {
            let rows = (jn - j).min(R);
            for i in (0..m).step_by(C) {
                let xs = (m - i).min(C);
                // Full tiles only; edge tiles clamp to the last row and drop the extra sums.
                let wr: [usize; R] = std::array::from_fn(|r| (j + r.min(rows - 1)) * k);
                let xr: [usize; C] = std::array::from_fn(|c| (i + c.min(xs - 1)) * k);
                let sums = tile(w, wr, x, xr, k);
                for c in 0..xs {
                    for r in 0..rows {
                        out[i + c][j + r] = sums[r][c] + bias.map_or(0.0, |b| b[j + r]);
                    }
                }
            }
        }
    }

    /// `result[r][c] = w[wr[r]..][..k] · x[xr[c]..][..k]` with 8-lane accumulator arrays.
    #[inline(always)]
    fn tile(w: &[f32], wr: [usize; R], x: &[f32], xr: [usize; C], k: usize) -> [[f32; C]; R] {
        let body = k / 8 * 8;
        let w_body: [&[f32]; R] = std::array::from_fn(|r| &w[wr[r]..wr[r] + body]);
        let x_body: [&[f32]; C] = std::array::from_fn(|c| &x[xr[c]..xr[c] + body]);
        let mut acc = [[[0.0f32; 8]; C]; R];
        for q in 0..body / 8 {
            let p = q * 8;
            for r in 0..R {
                let wv = &w_body[r][p..p + 8];
                for c in 0..C {
                    let xv = &x_body[c][p..p + 8];
                    for l in 0..8 {
                        acc[r][c][l] = wv[l].mul_add(xv[l], acc[r][c][l]);
                    }
                }
            }
        }
        let mut result = [[0.0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                let mut s: f32 = acc[r][c].iter().sum();
                for p in body..k {
                    s = w[wr[r] + p].mul_add(x[xr[c] + p], s);
                }
                result[r][c] = s;
            }
        }
        result
    }
}
