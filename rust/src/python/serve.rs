//! `infire._core.serve`: the OpenAI-compatible server from Python.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::convert::to_pyerr;
use super::engine_args;
use crate::engine::launch::launch;
use crate::server::{self, LogFormat, ServerArgs};

/// Loads `model`, starts the engine and serves the OpenAI-compatible API until SIGTERM or
/// SIGINT (see `infire.serve`). Blocks without holding the GIL. `options` are the engine's
/// options and `server` the server's (`ServerArgs`), each as a JSON object of the options set;
/// without `api_key`, `$INFIRE_API_KEY` (when set and not empty) is the key.
#[pyfunction]
#[pyo3(signature = (model, options="{}", server="{}"))]
pub fn serve(py: Python<'_>, model: PathBuf, options: &str, server: &str) -> PyResult<()> {
    let args = engine_args(options)?;
    let server_args = ServerArgs::from_json(server).map_err(to_pyerr)?;
    let stem = model.file_stem().map_or_else(
        || model.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let mut config = server_args.server_config(&stem).map_err(to_pyerr)?;
    if config.api_key.is_none() {
        config.api_key = std::env::var("INFIRE_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
    }
    let format = LogFormat::parse(&server_args.log_format).map_err(to_pyerr)?;
    server::init_logging(server_args.log_level.as_deref(), format).map_err(to_pyerr)?;
    // The server binds its port first and answers probes (503) while the model loads.
    py.detach(|| {
        server::run(config, move || {
            tracing::info!("loading {}", model.display());
            launch(&model, &args)
        })
    })
    .map_err(to_pyerr)
}
