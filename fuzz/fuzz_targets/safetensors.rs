//! cargo-fuzz target: `entry::safetensors` (see `fuzz/entry.rs`). Run from the repository root with
//! `cargo +nightly fuzz run safetensors tests/fuzz_corpus/safetensors`.
#![no_main]

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::safetensors(data));
