//! The server's logs: `tracing` events written to stderr as text lines or JSON objects, filtered
//! as `RUST_LOG` says (`info`, `infire=debug`, `infire::access=off`, ...).

use tracing_subscriber::EnvFilter;

use crate::error::{Error, Result};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`; anything else is an [`Error::InvalidConfig`].
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(Error::InvalidConfig(format!(
                "log format must be \"text\" or \"json\", got {other:?}"
            ))),
        }
    }
}

/// Installs the process's log writer. `level` is a `RUST_LOG`-style filter; without one,
/// `RUST_LOG` is read, and without that, `info`. A filter that does not parse is an
/// [`Error::InvalidConfig`]. Once a writer is installed (a second server in one process), later
/// calls change nothing.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => match std::env::var("RUST_LOG") {
            Ok(l) if !l.is_empty() => EnvFilter::try_new(&l),
            _ => EnvFilter::try_new("info"),
        },
    }
    .map_err(|e| Error::InvalidConfig(format!("bad log level / RUST_LOG filter: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_formats_and_filters_are_config_errors() {
        assert_eq!(LogFormat::parse("json").unwrap(), LogFormat::Json);
        assert!(LogFormat::parse("xml").is_err());
        let e = init(Some("info,[bad"), LogFormat::Text).unwrap_err();
        assert!(e.to_string().contains("log level"), "{e}");
    }
}
