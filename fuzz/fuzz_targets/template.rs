//! cargo-fuzz target: `entry::template` (see `fuzz/entry.rs`). Run from the repository root with
//! `cargo +nightly fuzz run template tests/fuzz_corpus/template`.
#![no_main]

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::template(data));
