//! cargo-fuzz target: `entry::http` (see `fuzz/entry.rs`). Run from the repository root with
//! `cargo +nightly fuzz run http tests/fuzz_corpus/http`.
#![no_main]

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::http(data));
