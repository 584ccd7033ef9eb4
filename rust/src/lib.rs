//! Infire: an LLM inference engine.
//!
//! The crate is organised as `ARCHITECTURE.md` maps it: weight readers (`weights`), model
//! configuration (`config`), tokenizer and chat templates (`tokenizer`), the Llama-family
//! forward pass (`model`) written once against the backend operations (`backend`), the KV
//! block pool (`kv`), sampling (`sampling`), the engine (`engine`, whose options live in
//! `engine::args`), measurement knobs (`tuning`) and the OpenAI-compatible HTTP server
//! (`server`). `python` holds the PyO3 bindings only.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod fingerprint;
pub mod kv;
pub mod loader;
pub mod model;
pub mod options;
pub mod sampling;
pub mod server;
pub mod structured;
pub mod tokenizer;
pub mod tuning;
pub mod weights;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
