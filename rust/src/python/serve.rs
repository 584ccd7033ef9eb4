//! `infire._core.serve`: the OpenAI-compatible server of a node of models, from Python.

use pyo3::prelude::*;

use super::convert::to_pyerr;
use crate::error::{Error, Result};
use crate::server::{self, LogFormat, ModelSpec, Node, ServerArgs};

/// Loads the models of `models` (a JSON list of entries: `{"model": PATH, "served_model_name",
/// "aliases", "memory", "on_demand", ...engine options}`, see `infire.serve`), starts one engine
/// per model and serves the OpenAI-compatible API until SIGTERM or SIGINT. Blocks without
/// holding the GIL. `server` holds the server's options (`ServerArgs`) as a JSON object; without
/// `api_key`, `$INFIRE_API_KEY` (when set and not empty) is the key.
#[pyfunction]
#[pyo3(signature = (models, server="{}"))]
pub fn serve(py: Python<'_>, models: &str, server: &str) -> PyResult<()> {
    let server_args = ServerArgs::from_json(server).map_err(to_pyerr)?;
    let mut specs = ModelSpec::parse_list(models).map_err(to_pyerr)?;
    if let Some(name) = &server_args.served_model_name {
        if specs.len() > 1 {
            return Err(to_pyerr(Error::InvalidConfig(
                "served_model_name names one model: give each model of a node its \
                 served_model_name in its entry"
                    .into(),
            )));
        }
        specs[0].name = name.clone();
    }
    let mut args = server_args.clone();
    if args.api_key.is_none() {
        args.api_key = std::env::var("INFIRE_API_KEY")
            .ok()
            .filter(|k| !k.is_empty());
    }
    let config = args.server_config(&specs[0].name).map_err(to_pyerr)?;
    let format = LogFormat::parse(&server_args.log_format).map_err(to_pyerr)?;
    server::init_logging(server_args.log_level.as_deref(), format).map_err(to_pyerr)?;
    // The server binds its port first and answers probes (503) while the models load.
    let node_memory = config.node_memory;
    py.detach(|| -> Result<()> { server::run(config, move || Node::start(specs, node_memory)) })
        .map_err(to_pyerr)
}
