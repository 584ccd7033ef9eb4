//! cargo-fuzz target: `entry::gguf` (see `fuzz/entry.rs`). Run from the repository root with
//! `cargo +nightly fuzz run gguf tests/fuzz_corpus/gguf`.
#![no_main]

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::gguf(data));
