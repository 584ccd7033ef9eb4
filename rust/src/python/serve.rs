//! `infire._core.serve`: the OpenAI-compatible server from Python.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;

use super::convert::{to_pyerr, Arg};
use super::engine_args;
use crate::engine::launch::launch;
use crate::error::Error;
use crate::server::{self, LogFormat, ServerConfig};

/// Sets `into` from a number of seconds, when given.
fn seconds(name: &str, v: Option<Arg<f64>>, into: &mut Duration) -> PyResult<()> {
    let Some(v) = v else { return Ok(()) };
    let s = v.get(name, "a number of seconds")?;
    *into = Duration::try_from_secs_f64(s).map_err(|_| {
        to_pyerr(Error::InvalidConfig(format!(
            "{name} must be a non-negative number of seconds, got {s}"
        )))
    })?;
    Ok(())
}

/// Loads `model`, starts the engine and serves the OpenAI-compatible API until SIGTERM or
/// SIGINT (see `infire.serve`). Blocks without holding the GIL.
///
/// `shutdown_grace`, `header_timeout`, `body_timeout` (seconds) and `max_connections`: `None`
/// keeps the server's defaults (see `ServerConfig`). `log_level` is a `RUST_LOG`-style filter
/// (`None` reads `RUST_LOG`, else `info`); `log_format` is `"text"` or `"json"`.
#[pyfunction]
#[pyo3(signature = (model, host="127.0.0.1".to_string(), port=8000, api_key=None,
    served_model_name=None, max_waiting=256, options="{}", shutdown_grace=None,
    header_timeout=None, body_timeout=None, max_connections=None, allow_unknown_fields=false,
    log_level=None, log_format="text"))]
#[allow(clippy::too_many_arguments)]
pub fn serve(
    py: Python<'_>,
    model: PathBuf,
    host: String,
    port: u16,
    api_key: Option<String>,
    served_model_name: Option<String>,
    max_waiting: usize,
    options: &str,
    shutdown_grace: Option<Arg<f64>>,
    header_timeout: Option<Arg<f64>>,
    body_timeout: Option<Arg<f64>>,
    max_connections: Option<Arg<usize>>,
    allow_unknown_fields: bool,
    log_level: Option<&str>,
    log_format: &str,
) -> PyResult<()> {
    let args = engine_args(options)?;
    let format = LogFormat::parse(log_format).map_err(to_pyerr)?;
    server::init_logging(log_level, format).map_err(to_pyerr)?;
    let name = served_model_name.unwrap_or_else(|| {
        model.file_stem().map_or_else(
            || model.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    });
    let mut config = ServerConfig {
        host,
        port,
        api_key,
        max_waiting,
        allow_unknown_fields,
        ..ServerConfig::new(name)
    };
    seconds("shutdown_grace", shutdown_grace, &mut config.shutdown_grace)?;
    seconds("header_timeout", header_timeout, &mut config.header_timeout)?;
    seconds("body_timeout", body_timeout, &mut config.body_timeout)?;
    if let Some(v) = max_connections {
        config.max_connections = v.get("max_connections", "a positive integer")?;
        if config.max_connections == 0 {
            return Err(to_pyerr(Error::InvalidConfig(
                "max_connections must be at least 1".into(),
            )));
        }
    }
    py.detach(|| {
        tracing::info!("loading {}", model.display());
        let launched = launch(&model, &args)?;
        tracing::info!(
            device = launched.device,
            device_name = %launched.device_name,
            kv_cache_tokens = launched.kv_capacity_tokens,
            "engine ready"
        );
        server::run(
            launched.handle,
            launched.tokenizer,
            launched.default_sampling,
            config,
        )
    })
    .map_err(to_pyerr)
}
