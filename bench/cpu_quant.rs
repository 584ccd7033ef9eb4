//! Benchmark of the CPU backend's quantized linear layer (`infire::backend::cpu::quant`)
//! against the f32 one (`matmul`) on SmolLM2-135M's shapes: Q4_1 layer matrices (fused QKV,
//! o_proj, fused gate/up, down) and the Q8_0 LM head, from decode (m = 1) to prefill chunks.
//!
//! Run: `cargo bench --bench cpu_quant -- [--quick | --crossover | --formats] [--json PATH]`
//! (`--crossover`: m = 1…256, to place the switch between the integer tile and the dequantized
//! panels; `--formats`: every format on one 1536 × 1536 matrix at m = 1 and 4, Auto against
//! the scalar dot product, the panels and f32).
//! Weights are cold as in `cpu_matmul.rs`: each timed call reads another copy of the matrix,
//! and the copies add up to more than [`COLD_BYTES`]. Each version is checked against the
//! f32 layer on the same dequantized weights before it is timed (relative error printed).
//! GB/s counts the bytes of `w` in the version's own format; times are the minimum over
//! [`MIN_TIME`] of calls (other jobs on a shared machine only ever add time).

use std::time::{Duration, Instant};

use infire::backend::cpu::matmul;
use infire::backend::cpu::quant::{linear_with, DotKernel, QuantFormat, QuantMatrix};
use infire::weights::ggml_quants::dequantize;
use infire::weights::RawTensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Bytes the rotating weight copies add up to: several times this machine's 32 MiB L3.
const COLD_BYTES: usize = 256 << 20;
/// Minimum time spent timing one configuration.
const MIN_TIME: Duration = Duration::from_millis(200);
/// SmolLM2-135M's matrices: (name, rows, cols, format).
const SHAPES: [(&str, usize, usize, QuantFormat); 5] = [
    ("qkv 960×576", 960, 576, QuantFormat::Q4_1),
    ("o_proj 576×576", 576, 576, QuantFormat::Q4_1),
    ("gate_up 3072×576", 3072, 576, QuantFormat::Q4_1),
    ("down 576×1536", 576, 1536, QuantFormat::Q4_1),
    ("lm_head 49152×576", 49152, 576, QuantFormat::Q8_0),
];

/// A version timed: the f32 layer, or the quantized one with a kernel.
#[derive(Clone, Copy, Debug)]
enum Version {
    F32,
    Quant(DotKernel),
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--formats") {
        return formats_table();
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    let ms: &[usize] = if quick {
        &[1, 16, 64]
    } else if args.iter().any(|a| a == "--crossover") {
        &[1, 2, 4, 8, 16, 32, 64, 128, 256]
    } else {
        &[1, 4, 16, 32, 64, 128]
    };
    let versions = [
        Version::F32,
        Version::Quant(DotKernel::Maddubs),
        Version::Quant(DotKernel::Integer),
        Version::Quant(DotKernel::Dequant),
        Version::Quant(DotKernel::Auto),
    ];
    println!(
        "# quantized vs f32 linear layer; {} rayon threads",
        rayon::current_num_threads()
    );
    println!(
        "| shape | m | f32 | integer (maddubs) | integer (16-bit tile) | dequant+gemm | auto |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    let mut rng = StdRng::seed_from_u64(1);
    for (name, n, k, format) in SHAPES {
        let bytes = random_blocks(&mut rng, format, n * k / 32);
        let wf = dequantize(format.ggml(), &bytes, n * k).unwrap();
        let copies = COLD_BYTES.div_ceil(bytes.len()).max(2);
        let quants: Vec<QuantMatrix> = (0..copies).map(|_| matrix(format, &bytes, n, k)).collect();
        let f32_copies = (COLD_BYTES / (wf.len() * 4)).clamp(2, copies);
        let floats: Vec<Vec<f32>> = (0..f32_copies).map(|_| wf.clone()).collect();
        for &m in ms {
            if n * m > 49152 * 16 && quick {
                continue;
            }
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut want = vec![0.0f32; m * n];
            matmul::linear(&x, m, &wf, n, k, None, &mut want);
            let mut cells = Vec::new();
            for v in versions {
                let mut out = vec![0.0f32; m * n];
                let mut i = 0;
                let mut call = |out: &mut [f32]| {
                    i += 1;
                    match v {
                        Version::F32 => {
                            matmul::linear(&x, m, &floats[i % floats.len()], n, k, None, out)
                        }
                        Version::Quant(kernel) => {
                            linear_with(kernel, &x, m, &quants[i % quants.len()], None, out)
                        }
                    }
                };
                call(&mut out);
                let err = rel_error(&out, &want);
                let secs = time(|| call(&mut out));
                let w_bytes = match v {
                    Version::F32 => wf.len() * 4,
                    Version::Quant(_) => bytes.len(),
                };
                let gbs = w_bytes as f64 / secs / 1e9;
                let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
                cells.push(format!(
                    "{:.0} µs, {gbs:.1} GB/s, {gflops:.0} GF/s",
                    secs * 1e6
                ));
                json.push(format!(
                    "{{\"shape\":\"{name}\",\"m\":{m},\"version\":\"{v:?}\",\"us\":{:.1},\"gb_s\":{gbs:.2},\"gflop_s\":{gflops:.1},\"rel_error\":{err:.2e}}}",
                    secs * 1e6
                ));
                if err > 2e-2 {
                    cells.push(format!("(rel. error {err:.1e}!)"));
                }
            }
            println!("| {name} | {m} | {} |", cells.join(" | "));
        }
    }
    if let Some(path) = json_path {
        let head = format!(
            "{{\"bench\":\"cpu_quant\",\"machine\":\"{}, {} threads\",\"command\":\"cargo bench --bench cpu_quant -- --json {path}\",\"rows\":[",
            cpu_name(),
            rayon::current_num_threads()
        );
        std::fs::write(path, format!("{head}\n{}\n]}}\n", json.join(",\n"))).unwrap();
    }
}

/// The CPU's model name from `/proc/cpuinfo` (Linux), or "unknown CPU".
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().replace('"', "'"))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `‖got − want‖ / ‖want‖`.
fn rel_error(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (f64::from(g) - f64::from(w)).powi(2);
        den += f64::from(w).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// The minimum time of `f` over at least [`MIN_TIME`] of calls.
fn time(mut f: impl FnMut()) -> f64 {
    let (start, mut best) = (Instant::now(), f64::INFINITY);
    while start.elapsed() < MIN_TIME {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Every format on a 1536 × 1536 matrix (cold copies), m = 1 and 4: µs per call of the f32
/// layer, `Auto`, the scalar dot product and the dequantized panels.
fn formats_table() {
    let (n, k) = (1536, 1536);
    println!("# {n}×{k}, {} rayon threads", rayon::current_num_threads());
    println!("| format | m | f32 | auto | scalar | dequant+gemm |");
    println!("|---|---|---|---|---|---|");
    let mut rng = StdRng::seed_from_u64(2);
    for format in QuantFormat::ALL {
        let bytes = random_blocks(&mut rng, format, n * k / format.block_elems());
        let wf = dequantize(format.ggml(), &bytes, n * k).unwrap();
        let quants: Vec<QuantMatrix> = (0..COLD_BYTES.div_ceil(bytes.len()))
            .map(|_| matrix(format, &bytes, n, k))
            .collect();
        let floats: Vec<Vec<f32>> = (0..COLD_BYTES / (wf.len() * 4))
            .map(|_| wf.clone())
            .collect();
        for m in [1, 4] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut out = vec![0.0f32; m * n];
            let mut i = 0;
            let f32_us = time(|| {
                i += 1;
                matmul::linear(&x, m, &floats[i % floats.len()], n, k, None, &mut out)
            });
            let mut quant_us = |kernel| {
                time(|| {
                    i += 1;
                    linear_with(kernel, &x, m, &quants[i % quants.len()], None, &mut out)
                })
            };
            let auto = quant_us(DotKernel::Auto);
            let scalar = quant_us(DotKernel::Scalar);
            let panels = quant_us(DotKernel::Dequant);
            println!(
                "| {format:?} | {m} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
                f32_us * 1e6,
                auto * 1e6,
                scalar * 1e6,
                panels * 1e6
            );
        }
    }
}

/// `blocks` random blocks of `format`: scales in ±[2⁻⁹, 2⁻⁴], random codes.
fn random_blocks(rng: &mut StdRng, format: QuantFormat, blocks: usize) -> Vec<u8> {
    let size = format.block_bytes();
    let mut out: Vec<u8> = (0..blocks * size).map(|_| rng.random()).collect();
    for b in out.chunks_exact_mut(size) {
        let at: &[usize] = match format {
            QuantFormat::Q4_1 | QuantFormat::Q5_1 | QuantFormat::Q4_K | QuantFormat::Q5_K => {
                &[0, 2]
            }
            QuantFormat::Q6_K => &[208],
            _ => &[0],
        };
        for &a in at {
            let v = rng.random_range(2f32.powi(-9)..2f32.powi(-4))
                * if rng.random() { 1.0 } else { -1.0 };
            b[a..a + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
    }
    out
}

fn matrix(format: QuantFormat, bytes: &[u8], n: usize, k: usize) -> QuantMatrix {
    let shape = [n, k];
    let raw = RawTensor {
        dtype: format.ggml().name(),
        shape: &shape,
        bytes,
    };
    QuantMatrix::from_raw(&[raw]).unwrap()
}
