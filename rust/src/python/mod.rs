//! PyO3 bindings: conversion and error mapping only. The Python package `infire` wraps these
//! in its public classes (documented in `python/infire/_core.pyi`); logic lives in the Rust
//! modules.
//!
//! `convert` holds the conversions and the error mapping; each other file binds one class or
//! function group.

mod cluster;
mod convert;
mod engine;
#[cfg(feature = "cuda")]
mod kernels;
mod quant;
mod sampling_params;
mod serve;
mod stream;
mod structured;
mod tokenizer;

use pyo3::prelude::*;

use crate::engine::EngineArgs;
use convert::to_pyerr;

/// Engine options from the JSON object the Python layer builds (unknown names and values of
/// the wrong type are `InvalidConfigError`s naming the option).
fn engine_args(options: &str) -> PyResult<EngineArgs> {
    EngineArgs::from_json(options).map_err(to_pyerr)
}

/// Every engine option (name, type, default, help) as JSON, for the Python layer and the
/// command line (see [`EngineArgs::schema`]).
#[pyfunction]
fn engine_args_schema() -> String {
    serde_json::to_string(&EngineArgs::schema()).expect("the schema is plain JSON")
}

/// Every server option (name, type, default, help) as JSON (see `ServerArgs::schema`).
#[pyfunction]
fn server_args_schema() -> String {
    let schema = crate::server::ServerArgs::schema();
    serde_json::to_string(&schema).expect("the schema is plain JSON")
}

/// Number of CUDA devices this build can use (0 without a driver or GPU).
#[pyfunction]
fn cuda_device_count() -> usize {
    crate::engine::launch::cuda_device_count()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<sampling_params::PySamplingParams>()?;
    m.add_class::<tokenizer::PyTokenizer>()?;
    m.add_class::<stream::PyStream>()?;
    m.add_function(wrap_pyfunction!(tokenizer::load_tokenizer, m)?)?;
    m.add_function(wrap_pyfunction!(serve::serve, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::fingerprint, m)?)?;
    m.add_function(wrap_pyfunction!(cluster::prefix_block_hashes, m)?)?;
    m.add_function(wrap_pyfunction!(engine_args_schema, m)?)?;
    m.add_function(wrap_pyfunction!(server_args_schema, m)?)?;
    m.add_function(wrap_pyfunction!(quant::quantize_rows, m)?)?;
    #[cfg(feature = "cuda")]
    {
        m.add_function(wrap_pyfunction!(kernels::kernel_names, m)?)?;
        m.add_function(wrap_pyfunction!(kernels::kernel_source, m)?)?;
        m.add_function(wrap_pyfunction!(kernels::compile_kernel, m)?)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
