//! The fuzz harness on stable Rust, run by `cargo test`: every file of the committed corpus
//! (`tests/fuzz_corpus/<target>/`, seeds and the inputs that once crashed or hung the engine)
//! through its target, then a bounded, deterministic mutation run over the same files.
//!
//! The targets are `fuzz/entry.rs` (shared with the cargo-fuzz targets): an `Err` is fine, a
//! panic is a failure. A failing input is written to `target/fuzz-failure-<target>.bin`.
//! `INFIRE_FUZZ_SECS` sets the mutation time per target (default 6 s; 0 runs the corpus only);
//! `INFIRE_FUZZ_SEED` the mutation seed. The long, coverage-guided run is `cargo fuzz` (README).

#[path = "../fuzz/entry.rs"]
mod entry;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Mutations per target at most, whatever the time budget.
const MAX_MUTATIONS: usize = 20_000;
/// Numbers that sit on the boundaries parsers get wrong, written over 4- and 8-byte fields.
const INTERESTING: [u64; 10] = [
    0,
    1,
    7,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    u64::MAX,
];

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to eight random edits of `input` (with `other` for splicing): bit flips, byte and
/// integer overwrites with boundary values, insertions, deletions, truncation, splices.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len());
        match rng.below(7) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.below(8),
            1 if !out.is_empty() => out[at] = [0, 0xff, 0x7f, 0x80, b'{', b'"'][rng.below(6)],
            2 if out.len() >= 8 => {
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let at = rng.below(out.len() - width + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                out[at..at + width].copy_from_slice(&v[..width]);
            }
            3 => {
                let n = 1 + rng.below(16);
                let byte = rng.next() as u8;
                out.splice(at..at, std::iter::repeat_n(byte, n));
            }
            4 if !out.is_empty() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                out.drain(at..end);
            }
            5 => out.truncate(at),
            _ if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            _ => {}
        }
    }
    out
}

/// The corpus files of `target`, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `run` on `input`; on a panic, saves the input for reproduction and fails the test.
fn check(target: &str, what: &str, input: &[u8], run: fn(&[u8])) {
    let outcome = std::panic::catch_unwind(|| run(input));
    if outcome.is_err() {
        let saved = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("fuzz-failure-{target}.bin"));
        let _ = std::fs::write(&saved, input);
        panic!(
            "{target}: {what} panicked; input saved to {}",
            saved.display()
        );
    }
}

/// The corpus, then mutations for the time budget (scaled by `cost`, for slow targets).
fn fuzz(target: &str, run: fn(&[u8]), cost: u32) {
    let files = corpus(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for (path, bytes) in &files {
        let started = Instant::now();
        check(target, &path.display().to_string(), bytes, run);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}: took {:?}",
            path.display(),
            started.elapsed()
        );
    }
    let secs: f64 = std::env::var("INFIRE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6.0);
    let seed: u64 = std::env::var("INFIRE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1f1e_5eed);
    let budget = Duration::from_secs_f64(secs / f64::from(cost.max(1)));
    let mut rng = Rng(seed ^ target.bytes().fold(0, |h, b| h * 31 + u64::from(b)) | 1);
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < budget && runs < MAX_MUTATIONS {
        let (_, input) = &files[rng.below(files.len())];
        let (_, other) = &files[rng.below(files.len())];
        let mutated = mutate(&mut rng, input, other);
        check(target, &format!("mutation #{runs}"), &mutated, run);
        runs += 1;
    }
    eprintln!("{target}: {} corpus files, {runs} mutations", files.len());
}

#[test]
fn gguf() {
    fuzz("gguf", entry::gguf, 1);
}

#[test]
fn safetensors() {
    fuzz("safetensors", entry::safetensors, 1);
}

#[test]
fn config_json() {
    fuzz("config", entry::config, 1);
}

#[test]
fn tokenizer_json() {
    fuzz("tokenizer", entry::tokenizer, 1);
}

#[test]
fn chat_template() {
    fuzz("template", entry::template, 1);
}

#[test]
fn http_request() {
    fuzz("http", entry::http, 2);
}
