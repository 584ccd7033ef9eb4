//! cargo-fuzz target: `entry::config` (see `fuzz/entry.rs`). Run from the repository root with
//! `cargo +nightly fuzz run config tests/fuzz_corpus/config`.
#![no_main]

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::config(data));
