//! Measurement knobs: every environment variable that changes how the engine runs (never what
//! it computes) is read here, once, when an engine starts ([`Tuning::from_env`]), and handed
//! to the parts it concerns. They exist for A/B measurements and diagnostics (see
//! `kernels/cuda/NOTES.md` and `bench/`); the defaults are the measured choices.
//!
//! | variable | effect |
//! | --- | --- |
//! | `INFIRE_STEP_TRACE=PATH` | a JSON line per step (shape, host and device times) |
//! | `INFIRE_GEMV_MAX_ROWS=N` | most rows of a step on the GEMV kernels (0: cuBLASLt for all; FP8 matrices take up to 8 on sm_89+, others 1) |
//! | `INFIRE_DECODE_MIN_SPLIT_KEYS=N` | fewest keys per split of decode attention at a few rows |
//! | `INFIRE_DECODE_BATCH_SPLITS=N` | splits of decode attention in a large batch (1: none) |
//! | `INFIRE_PDL=0` | no programmatic dependent launch |
//! | `INFIRE_KERNEL_DEFINES=NAME=VALUE,...` | extra `-D` constants for every kernel |
//! | `INFIRE_FP8_FUSED=1` | the norms before an FP8 GEMM of several rows write its FP8 input, and the gate/up scales go into silu·mul (`kernels/cuda/fp8_fused.cu`; the same bits, fewer passes; off until timed on a GPU) |
//! | `INFIRE_FAIL_AFTER_STEPS=N` | the engine loop panics after its N-th step (tests of failure handling) |
//! | `INFIRE_CPU_SPIN_US=N` | how long the CPU backend's spin-pool helpers wait for work before parking (0: rayon runs every region) |

use std::path::PathBuf;

/// The knobs; `None` (or the default) leaves the measured choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tuning {
    /// Where the step trace goes (`INFIRE_STEP_TRACE`).
    pub step_trace: Option<PathBuf>,
    /// Most rows of a step whose projections run on the GEMV kernels (`INFIRE_GEMV_MAX_ROWS`).
    pub gemv_max_rows: Option<usize>,
    /// Fewest keys per split of decode attention at a few rows (`INFIRE_DECODE_MIN_SPLIT_KEYS`).
    pub decode_min_split_keys: Option<usize>,
    /// Splits of decode attention in a large batch (`INFIRE_DECODE_BATCH_SPLITS`).
    pub decode_batch_splits: Option<usize>,
    /// Programmatic dependent launch off (`INFIRE_PDL=0`).
    pub no_pdl: bool,
    /// Extra compile-time constants of every kernel (`INFIRE_KERNEL_DEFINES`), part of the
    /// kernels' cache key.
    pub kernel_defines: Vec<(String, Option<String>)>,
    /// The fused kernels around FP8 GEMMs of several rows (`INFIRE_FP8_FUSED=1`).
    pub fp8_fused: bool,
    /// The engine loop panics after this many steps (`INFIRE_FAIL_AFTER_STEPS`), as a bug in a
    /// step would: how the tests drive a real engine into a real failure.
    pub fail_after_steps: Option<usize>,
    /// Microseconds the CPU spin pool's helpers spin before they park (`INFIRE_CPU_SPIN_US`;
    /// 0: rayon). Read by the pool itself, once per process (`backend/cpu/spin_pool.rs`): its
    /// helpers are shared by every CPU engine of the process.
    pub cpu_spin_us: Option<u64>,
}

impl Tuning {
    /// The knobs set in the environment (a value that does not parse is ignored).
    pub fn from_env() -> Tuning {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let count = |name: &str| var(name).and_then(|v| v.parse().ok());
        Tuning {
            step_trace: std::env::var_os("INFIRE_STEP_TRACE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            gemv_max_rows: count("INFIRE_GEMV_MAX_ROWS"),
            decode_min_split_keys: count("INFIRE_DECODE_MIN_SPLIT_KEYS"),
            decode_batch_splits: count("INFIRE_DECODE_BATCH_SPLITS"),
            no_pdl: var("INFIRE_PDL").is_some_and(|v| v == "0"),
            kernel_defines: var("INFIRE_KERNEL_DEFINES")
                .map_or_else(Vec::new, |s| parse_defines(&s)),
            fp8_fused: var("INFIRE_FP8_FUSED").is_some_and(|v| v == "1"),
            fail_after_steps: count("INFIRE_FAIL_AFTER_STEPS"),
            cpu_spin_us: count("INFIRE_CPU_SPIN_US").map(|n: usize| n as u64),
        }
    }
}

/// `NAME=VALUE,NAME2` as (name, value) pairs.
pub fn parse_defines(spec: &str) -> Vec<(String, Option<String>)> {
    spec.split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| match d.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (d.trim().to_string(), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_parse_with_and_without_values() {
        assert_eq!(
            parse_defines("A=1, B ,,C=x"),
            vec![
                ("A".to_string(), Some("1".to_string())),
                ("B".to_string(), None),
                ("C".to_string(), Some("x".to_string()))
            ]
        );
        assert!(parse_defines("").is_empty());
    }
}
