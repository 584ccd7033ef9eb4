//! Every server option in one place, declared as the engine's are (`crate::options`):
//! [`ServerArgs`] is what `infire.serve(**kwargs)` and the flags of `infire serve` set, built
//! from [`ServerArgs::schema`]; [`ServerArgs::server_config`] checks it and settles it into the
//! [`ServerConfig`] the server runs with.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::traffic::{parse_keys, ApiKey};
use crate::error::{Error, Result};
use crate::options::{declare_options, parse_options};

declare_options! {
    /// The options of the HTTP server.
    ServerArgs {
        /// Address to listen on.
        host: String = "127.0.0.1".into(),
        /// Port to listen on (0: any free one, printed at start).
        port: u16 = 8000,
        /// Require `Authorization: Bearer KEY` on /v1 routes (default: $INFIRE_API_KEY, else
        /// none). KEY=interactive or KEY=batch binds a traffic class to a key; several keys are
        /// separated by commas (the flag may be repeated). Only a key bound to no class may use
        /// the admin API.
        api_key: Option<String> = None,
        /// The model name clients use (default: the model file's stem).
        served_model_name: Option<String> = None,
        /// Sequences waiting in the engine at which new requests get 429.
        max_waiting: usize = 256,
        /// Interactive requests waiting for their first token, per model, at which new ones get
        /// 429.
        max_waiting_interactive: usize = 256,
        /// Batch requests waiting for their first token, per model, at which new ones get 429.
        max_waiting_batch: usize = 1024,
        /// Seconds a request waits for a sleeping or on-demand model to be ready before a 503.
        wake_timeout: f64 = 60.0,
        /// Bytes the models may hold in all on the CPU (default: the memory available at
        /// start); each model's memory budget is checked against it.
        node_memory: Option<usize> = None,
        /// Largest request body in bytes; larger ones get 413.
        max_body_bytes: usize = 8 << 20,
        /// Seconds running requests get to finish after SIGTERM; streams still open then end
        /// with an error event.
        shutdown_grace: f64 = 30.0,
        /// Seconds a connection has to send a request's head once it is ready for one (slow
        /// headers and idle keep-alive connections are closed after this).
        header_timeout: f64 = 10.0,
        /// Seconds a request's body has to arrive once its head has (slower ones get 408).
        body_timeout: f64 = 30.0,
        /// Connections served at once; one more gets a 503 and is closed.
        max_connections: usize = 512,
        /// Ignore (and log) request fields the server does not know, instead of a 400.
        allow_unknown_fields: bool = false,
        /// Log filter, as RUST_LOG ("info", "debug", "info,infire::access=off"; default:
        /// $RUST_LOG, else info).
        log_level: Option<String> = None,
        /// Log line format: "text" or "json".
        log_format: String = "text".into(),
        /// OTLP/HTTP collector to send request traces to ("http://host:4318"; default:
        /// $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else no tracing); $OTEL_SERVICE_NAME names
        /// the service.
        otlp_traces_endpoint: Option<String> = None,
    }
}

impl ServerArgs {
    /// Parses options given as a JSON object (unknown names and wrong types are errors that
    /// name the option).
    pub fn from_json(json: &str) -> Result<ServerArgs> {
        parse_options(json, "server", &ServerArgs::schema())
    }

    /// The server's configuration for serving `default_name` (the name clients use unless
    /// `served_model_name` is set); an impossible value is an [`Error::InvalidConfig`] naming
    /// it. (`$INFIRE_API_KEY` is read where a server is started from these options, not here.)
    pub fn server_config(&self, default_name: &str) -> Result<ServerConfig> {
        let seconds = |name: &str, s: f64| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                Error::InvalidConfig(format!(
                    "{name} must be a non-negative number of seconds, got {s}"
                ))
            })
        };
        for (name, n) in [
            ("max_connections", self.max_connections),
            ("max_body_bytes", self.max_body_bytes),
        ] {
            if n == 0 {
                return Err(Error::InvalidConfig(format!("{name} must be at least 1")));
            }
        }
        let api_keys = match &self.api_key {
            Some(k) => parse_keys(k)?,
            None => Vec::new(),
        };
        Ok(ServerConfig {
            host: self.host.clone(),
            port: self.port,
            api_keys,
            served_model_name: self
                .served_model_name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            max_waiting: self.max_waiting,
            max_waiting_class: [self.max_waiting_interactive, self.max_waiting_batch],
            wake_timeout: seconds("wake_timeout", self.wake_timeout)?,
            node_memory: self.node_memory,
            max_body_bytes: self.max_body_bytes,
            shutdown_grace: seconds("shutdown_grace", self.shutdown_grace)?,
            header_timeout: seconds("header_timeout", self.header_timeout)?,
            body_timeout: seconds("body_timeout", self.body_timeout)?,
            max_connections: self.max_connections,
            allow_unknown_fields: self.allow_unknown_fields,
            otlp_traces_endpoint: self.otlp_traces_endpoint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_servers_and_bad_values_are_named() {
        let config = ServerArgs::default().server_config("m").unwrap();
        assert_eq!(config.served_model_name, "m");
        assert_eq!(config.max_waiting, 256);
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert!(config.api_keys.is_empty());
        let keyed = ServerArgs::from_json(r#"{"api_key": "a,b=batch"}"#).unwrap();
        let keys = keyed.server_config("m").unwrap().api_keys;
        assert_eq!(keys[1].class, Some(super::super::Class::Batch));
        let args = ServerArgs::from_json(r#"{"port": 0, "shutdown_grace": 1.5}"#).unwrap();
        let config = args.server_config("m").unwrap();
        assert_eq!(
            (config.port, config.shutdown_grace),
            (0, Duration::from_millis(1500))
        );
        for (json, named) in [
            (r#"{"prot": 1}"#, "prot"),
            (r#"{"port": 70000}"#, "port"),
            (r#"{"max_waiting": "x"}"#, "max_waiting"),
        ] {
            let e = ServerArgs::from_json(json).unwrap_err().to_string();
            assert!(e.contains(named), "{json}: {e}");
        }
        let bad = ServerArgs {
            body_timeout: -1.0,
            ..ServerArgs::default()
        };
        let e = bad.server_config("m").unwrap_err().to_string();
        assert!(e.contains("body_timeout"), "{e}");
        let none = ServerArgs {
            max_connections: 0,
            ..ServerArgs::default()
        };
        assert!(none.server_config("m").is_err());
    }
}

/// The server's settled options (from [`ServerArgs`], whose fields document them).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default 127.0.0.1).
    pub host: String,
    /// Port to listen on (default 8000; 0 picks a free one).
    pub port: u16,
    /// When set, `/v1` routes need `Authorization: Bearer <api_key>`: the keys accepted, and
    /// the class each binds (see `traffic`).
    pub api_keys: Vec<ApiKey>,
    /// The name of the model a request was routed to (in a node's own state: the first
    /// model's); responses name it.
    pub served_model_name: String,
    /// Most requests of each class (interactive, batch) that wait for their first token on one
    /// model; one more gets 429.
    pub max_waiting_class: [usize; 2],
    /// How long a request waits for a sleeping or on-demand model to be ready.
    pub wake_timeout: Duration,
    /// Bytes the node's models may hold on the CPU (`None`: what the machine has available).
    pub node_memory: Option<usize>,
    /// Sequences waiting in the engine at which new requests get 429 (default 256).
    pub max_waiting: usize,
    /// Largest request body in bytes (default 8 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    /// How long running requests may take to finish after SIGTERM (default 30 s); streams
    /// still open then end with an error event.
    pub shutdown_grace: Duration,
    /// How long a connection may take to send a request's head, counted from when it is ready
    /// for one: slow headers and idle keep-alive connections are closed after this (default
    /// 10 s).
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its head has; slower ones get 408
    /// (default 30 s).
    pub body_timeout: Duration,
    /// Most connections served at once; one more gets a 503 and is closed (default 512).
    pub max_connections: usize,
    /// Ignore (and log) request fields this server does not know instead of answering 400
    /// (default false).
    pub allow_unknown_fields: bool,
    /// Where request traces go (OTLP/HTTP; `None`: `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    /// nowhere).
    pub otlp_traces_endpoint: Option<String>,
}

impl ServerConfig {
    /// Defaults ([`ServerArgs`]'s) for serving `served_model_name`.
    pub fn new(served_model_name: impl Into<String>) -> Self {
        ServerArgs::default()
            .server_config(&served_model_name.into())
            .expect("the default server options are valid")
    }
}
