//! cargo-fuzz target: `entry::tokenizer` (see `fuzz/entry.rs`). Run from the repository root with
//! `cargo +nightly fuzz run tokenizer tests/fuzz_corpus/tokenizer`.
#![no_main]

#[path = "../entry.rs"]
mod entry;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry::tokenizer(data));
