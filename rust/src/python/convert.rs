//! Conversion between Python values and the core's types, and the mapping of core errors to
//! the `infire.errors` classes.

use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::Borrowed;

use crate::engine::RequestOutput;
use crate::error::Error;
use crate::sampling::StopReason;

/// Raises the `infire.errors` class that matches `e`.
pub fn to_pyerr(e: Error) -> PyErr {
    let class = match &e {
        Error::ModelNotFound { .. } => "ModelNotFoundError",
        Error::InvalidModel { .. } => "InvalidModelError",
        Error::Unsupported(_) => "UnsupportedModelError",
        Error::Tokenizer(_) => "TokenizerError",
        Error::InvalidRequest(_) => "InvalidRequestError",
        Error::InvalidConfig(_) => "InvalidConfigError",
        Error::Engine(_) => "EngineError",
        Error::Io { .. } => "ModelNotFoundError",
    };
    let msg = e.to_string();
    Python::attach(
        |py| match py.import("infire.errors").and_then(|m| m.getattr(class)) {
            Ok(cls) => PyErr::from_type(cls.cast_into().expect("infire.errors holds classes"), msg),
            Err(_) => PyRuntimeError::new_err(msg),
        },
    )
}

/// An `InvalidRequestError` saying `msg`.
pub fn invalid(msg: impl Into<String>) -> PyErr {
    to_pyerr(Error::InvalidRequest(msg.into()))
}

/// The Python type name of `v`, for messages.
pub fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// An argument as the caller passed it: converted to `T`, or why it could not be. Taking
/// arguments this way keeps PyO3's `TypeError` / `OverflowError` (`seed=2**64`, `n=-1`,
/// `temperature="hot"`) from reaching the caller: [`Arg::get`] turns a failed conversion into an
/// [`Error::InvalidRequest`] naming the argument.
pub struct Arg<T>(Result<T, String>);

impl<T> Arg<T> {
    /// An argument already converted (for signature defaults).
    pub fn given(v: T) -> Self {
        Arg(Ok(v))
    }

    /// The value, or an invalid request saying that `name` must be `want`.
    pub fn get(self, name: &str, want: &str) -> PyResult<T> {
        self.0
            .map_err(|got| invalid(format!("{name} must be {want}, got {got}")))
    }
}

impl<'a, 'py, T: FromPyObjectOwned<'py>> FromPyObject<'a, 'py> for Arg<T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Arg(obj.extract::<T>().map_err(|_| describe(&obj))))
    }
}

/// `v`'s repr (cut short) and type, for messages.
pub fn describe(v: &Bound<'_, PyAny>) -> String {
    let shown = v.repr().map_or_else(|_| "?".to_string(), |r| r.to_string());
    format!("{} ({})", truncate(&shown, 64), type_name(v))
}

/// Token ids from any Python iterable of ints; an id outside `[0, 2**32)` or a non-integer is
/// an invalid request naming `what` and the position.
pub fn token_ids(what: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let items = v.try_iter().map_err(|_| {
        invalid(format!(
            "{what} must be a list of token ids, got {}",
            type_name(v)
        ))
    })?;
    let mut ids = Vec::with_capacity(v.len().unwrap_or(0));
    for (i, item) in items.enumerate() {
        let item = item?;
        let id = item.extract::<u32>().map_err(|_| {
            invalid(format!(
                "{what}[{i}] must be a token id in [0, 2**32), got {}",
                describe(&item)
            ))
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// Strings from one `str` or an iterable of them (vLLM's `stop`).
pub fn strings(what: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(vec![s.to_str()?.to_string()]);
    }
    let bad = || {
        invalid(format!(
            "{what} must be a string or a list of strings, got {}",
            describe(v)
        ))
    };
    let mut out = Vec::new();
    for item in v.try_iter().map_err(|_| bad())? {
        out.push(item?.extract::<String>().map_err(|_| bad())?);
    }
    Ok(out)
}

/// `s` cut to at most `max` characters, for echoing user values in messages.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// A prompt as Python gives it: text or token ids.
pub enum PromptArg {
    Text(String),
    Ids(Vec<u32>),
}

impl PromptArg {
    /// Converts a `str` or an iterable of ints; anything else is an invalid request.
    pub fn from_py(v: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(s) = v.cast::<PyString>() {
            return Ok(PromptArg::Text(s.to_str()?.to_string()));
        }
        token_ids("prompt token ids", v).map(PromptArg::Ids)
    }
}

/// A request id as Python spells it (the decimal string of the engine's id).
pub fn parse_request_id(id: &str) -> PyResult<u64> {
    id.parse()
        .map_err(|_| invalid(format!("unknown request id {id:?}")))
}

/// `[{token: logprob, ...}, ...]` per step, or `None`; with `leading_none`, a `None` first
/// (the first prompt token has no log-probability, as in vLLM).
fn logprob_list<'py>(
    py: Python<'py>,
    steps: Option<&[Vec<(u32, f32)>]>,
    leading_none: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let Some(steps) = steps else {
        return Ok(py.None().into_bound(py));
    };
    let list = PyList::empty(py);
    if leading_none {
        list.append(py.None())?;
    }
    for step in steps {
        let d = PyDict::new(py);
        for &(t, lp) in step {
            d.set_item(t, lp)?;
        }
        list.append(d)?;
    }
    Ok(list.into_any())
}

/// vLLM's `stop_reason`: the stop string, the stop token id, or `None`.
fn stop_reason<'py>(py: Python<'py>, r: Option<&StopReason>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match r {
        None => py.None().into_bound(py),
        Some(StopReason::Token(t)) => t.into_pyobject(py)?.into_any(),
        Some(StopReason::Text(s)) => PyString::new(py, s).into_any(),
    })
}

/// The dict `infire.RequestOutput._from_core` takes.
pub fn output_dict<'py>(
    py: Python<'py>,
    o: &RequestOutput,
    prompt: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let completions = PyList::empty(py);
    for c in &o.outputs {
        let d = PyDict::new(py);
        d.set_item("index", c.index)?;
        d.set_item("text", &c.text)?;
        d.set_item("token_ids", &c.token_ids)?;
        d.set_item("finish_reason", c.finish_reason.map(|r| r.as_str()))?;
        d.set_item("stop_reason", stop_reason(py, c.stop_reason.as_ref())?)?;
        d.set_item("logprobs", logprob_list(py, c.logprobs.as_deref(), false)?)?;
        completions.append(d)?;
    }
    let metrics = PyDict::new(py);
    metrics.set_item("arrival_time", o.metrics.arrival_time)?;
    metrics.set_item("first_token_time", o.metrics.first_token_time)?;
    metrics.set_item("finished_time", o.metrics.finished_time)?;
    let out = PyDict::new(py);
    out.set_item("request_id", o.request_id.to_string())?;
    out.set_item("prompt", prompt)?;
    out.set_item("prompt_token_ids", &o.prompt_token_ids)?;
    out.set_item("outputs", completions)?;
    out.set_item("finished", o.finished())?;
    out.set_item("num_cached_tokens", o.num_cached_tokens)?;
    out.set_item(
        "prompt_logprobs",
        logprob_list(py, o.prompt_logprobs.as_deref(), true)?,
    )?;
    out.set_item("metrics", metrics)?;
    Ok(out)
}
