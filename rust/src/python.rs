//! PyO3 bindings: conversion and error mapping only. The Python package `infire` wraps these
//! in its public classes; logic lives in the Rust modules.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::conversion::FromPyObjectOwned;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::Borrowed;

use crate::engine::engine_loop::{EngineHandle, Submitted};
use crate::engine::launch::launch;
use crate::engine::{EngineArgs, RequestOutput};
use crate::error::Error;
use crate::loader::open_tokenizer;
use crate::sampling::SamplingParams;
use crate::server::{self, ServerConfig};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// Raises the `infire.errors` class that matches `e`.
fn to_pyerr(e: Error) -> PyErr {
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

/// The Python type name of `v`, for messages.
fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// An argument as the caller passed it: converted to `T`, or why it could not be. Taking
/// arguments this way keeps PyO3's `TypeError` / `OverflowError` (`seed=2**64`, `n=-1`,
/// `temperature="hot"`) from reaching the caller: [`Arg::get`] turns a failed conversion into an
/// [`Error::InvalidRequest`] naming the argument.
struct Arg<T>(Result<T, String>);

impl<T> Arg<T> {
    /// An argument already converted (for signature defaults).
    fn given(v: T) -> Self {
        Arg(Ok(v))
    }

    /// The value, or an invalid request saying that `name` must be `want`.
    fn get(self, name: &str, want: &str) -> PyResult<T> {
        self.0.map_err(|got| {
            to_pyerr(Error::InvalidRequest(format!(
                "{name} must be {want}, got {got}"
            )))
        })
    }
}

impl<'a, 'py, T: FromPyObjectOwned<'py>> FromPyObject<'a, 'py> for Arg<T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Arg(obj.extract::<T>().map_err(|_| describe(&obj))))
    }
}

/// `v`'s repr (cut short) and type, for messages.
fn describe(v: &Bound<'_, PyAny>) -> String {
    let shown = v.repr().map_or_else(|_| "?".to_string(), |r| r.to_string());
    format!("{} ({})", truncate(&shown, 64), type_name(v))
}

/// Token ids from any Python iterable of ints; an id outside `[0, 2**32)` or a non-integer is
/// an invalid request naming `what` and the position.
fn token_ids(what: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let bad = |m: String| to_pyerr(Error::InvalidRequest(m));
    let items = v.try_iter().map_err(|_| {
        bad(format!(
            "{what} must be a list of token ids, got {}",
            type_name(v)
        ))
    })?;
    let mut ids = Vec::with_capacity(v.len().unwrap_or(0));
    for (i, item) in items.enumerate() {
        let item = item?;
        let id = item.extract::<u32>().map_err(|_| {
            bad(format!(
                "{what}[{i}] must be a token id in [0, 2**32), got {}",
                describe(&item)
            ))
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// `s` cut to at most `max` characters, for echoing user values in messages.
fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// Sampling parameters, validated in Rust (see `infire.SamplingParams` for the docs).
#[pyclass(name = "SamplingParams", module = "infire._core", frozen)]
#[derive(Clone)]
pub struct PySamplingParams {
    inner: SamplingParams,
}

#[pymethods]
impl PySamplingParams {
    #[new]
    #[pyo3(signature = (n=Arg::given(1), max_tokens=Some(Arg::given(16)), temperature=Arg::given(1.0),
        top_p=Arg::given(1.0), top_k=Arg::given(-1), min_p=Arg::given(0.0), seed=None, stop=None,
        stop_token_ids=None, ignore_eos=Arg::given(false), repetition_penalty=Arg::given(1.0),
        presence_penalty=Arg::given(0.0), frequency_penalty=Arg::given(0.0), logprobs=None,
        prompt_logprobs=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n: Arg<usize>,
        max_tokens: Option<Arg<usize>>,
        temperature: Arg<f64>,
        top_p: Arg<f64>,
        top_k: Arg<i32>,
        min_p: Arg<f64>,
        seed: Option<Arg<u64>>,
        stop: Option<Arg<Vec<String>>>,
        stop_token_ids: Option<Arg<Vec<u32>>>,
        ignore_eos: Arg<bool>,
        repetition_penalty: Arg<f64>,
        presence_penalty: Arg<f64>,
        frequency_penalty: Arg<f64>,
        logprobs: Option<Arg<usize>>,
        prompt_logprobs: Option<Arg<usize>>,
    ) -> PyResult<Self> {
        const COUNT: &str = "an integer >= 0";
        let inner = SamplingParams {
            n: n.get("n", COUNT)?,
            max_tokens: max_tokens.map(|v| v.get("max_tokens", COUNT)).transpose()?,
            temperature: temperature.get("temperature", "a number")? as f32,
            top_p: top_p.get("top_p", "a number")? as f32,
            top_k: top_k.get("top_k", "-1 or a positive 32-bit integer")?,
            min_p: min_p.get("min_p", "a number")? as f32,
            seed: seed
                .map(|v| v.get("seed", "an integer in [0, 2**64)"))
                .transpose()?,
            stop: stop
                .map(|v| v.get("stop", "a list of strings"))
                .transpose()?
                .unwrap_or_default(),
            stop_token_ids: stop_token_ids
                .map(|v| v.get("stop_token_ids", "a list of token ids in [0, 2**32)"))
                .transpose()?
                .unwrap_or_default(),
            ignore_eos: ignore_eos.get("ignore_eos", "a bool")?,
            repetition_penalty: repetition_penalty.get("repetition_penalty", "a number")? as f32,
            presence_penalty: presence_penalty.get("presence_penalty", "a number")? as f32,
            frequency_penalty: frequency_penalty.get("frequency_penalty", "a number")? as f32,
            logprobs: logprobs.map(|v| v.get("logprobs", COUNT)).transpose()?,
            prompt_logprobs: prompt_logprobs
                .map(|v| v.get("prompt_logprobs", COUNT))
                .transpose()?,
        };
        inner.validate().map_err(to_pyerr)?;
        Ok(PySamplingParams { inner })
    }

    #[getter]
    fn n(&self) -> usize {
        self.inner.n
    }
    #[getter]
    fn max_tokens(&self) -> Option<usize> {
        self.inner.max_tokens
    }
    #[getter]
    fn temperature(&self) -> f32 {
        self.inner.temperature
    }
    #[getter]
    fn top_p(&self) -> f32 {
        self.inner.top_p
    }
    #[getter]
    fn top_k(&self) -> i32 {
        self.inner.top_k
    }
    #[getter]
    fn min_p(&self) -> f32 {
        self.inner.min_p
    }
    #[getter]
    fn seed(&self) -> Option<u64> {
        self.inner.seed
    }
    #[getter]
    fn stop(&self) -> Vec<String> {
        self.inner.stop.clone()
    }
    #[getter]
    fn stop_token_ids(&self) -> Vec<u32> {
        self.inner.stop_token_ids.clone()
    }
    #[getter]
    fn ignore_eos(&self) -> bool {
        self.inner.ignore_eos
    }
    #[getter]
    fn repetition_penalty(&self) -> f32 {
        self.inner.repetition_penalty
    }
    #[getter]
    fn presence_penalty(&self) -> f32 {
        self.inner.presence_penalty
    }
    #[getter]
    fn frequency_penalty(&self) -> f32 {
        self.inner.frequency_penalty
    }
    #[getter]
    fn logprobs(&self) -> Option<usize> {
        self.inner.logprobs
    }
    #[getter]
    fn prompt_logprobs(&self) -> Option<usize> {
        self.inner.prompt_logprobs
    }

    fn __repr__(&self) -> String {
        let p = &self.inner;
        format!(
            "SamplingParams(n={}, max_tokens={:?}, temperature={}, top_p={}, top_k={}, min_p={}, \
             seed={:?}, stop={:?}, stop_token_ids={:?}, ignore_eos={}, repetition_penalty={}, \
             presence_penalty={}, frequency_penalty={}, logprobs={:?}, prompt_logprobs={:?})",
            p.n,
            p.max_tokens,
            p.temperature,
            p.top_p,
            p.top_k,
            p.min_p,
            p.seed,
            p.stop,
            p.stop_token_ids,
            p.ignore_eos,
            p.repetition_penalty,
            p.presence_penalty,
            p.frequency_penalty,
            p.logprobs,
            p.prompt_logprobs
        )
    }
}

/// A prompt as Python gives it: text or token ids.
enum PromptArg {
    Text(String),
    Ids(Vec<u32>),
}

impl PromptArg {
    /// Converts a `str` or an iterable of ints; anything else is an invalid request.
    fn from_py(v: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(s) = v.cast::<PyString>() {
            return Ok(PromptArg::Text(s.to_str()?.to_string()));
        }
        token_ids("prompt token ids", v).map(PromptArg::Ids)
    }
}

/// A tokenizer with its chat template.
#[pyclass(name = "Tokenizer", module = "infire._core", frozen)]
pub struct PyTokenizer {
    inner: Arc<Tokenizer>,
}

#[pymethods]
impl PyTokenizer {
    #[pyo3(signature = (text, add_special_tokens=false))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        py.detach(|| self.inner.encode(text, add_special_tokens))
            .map_err(to_pyerr)
    }

    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<String> {
        let ids = token_ids("token ids", ids)?;
        py.detach(|| self.inner.decode(&ids, skip_special_tokens))
            .map_err(to_pyerr)
    }

    #[pyo3(signature = (messages, add_generation_prompt=true))]
    fn apply_chat_template(
        &self,
        messages: Vec<HashMap<String, String>>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        render_chat(&self.inner, messages, add_generation_prompt)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_token_ids()
    }
}

fn render_chat(
    tok: &Tokenizer,
    messages: Vec<HashMap<String, String>>,
    add_generation_prompt: bool,
) -> PyResult<String> {
    let mut chat = Vec::with_capacity(messages.len());
    for mut m in messages {
        let (Some(role), Some(content)) = (m.remove("role"), m.remove("content")) else {
            return Err(to_pyerr(Error::InvalidRequest(
                "each message needs a \"role\" and a \"content\"".into(),
            )));
        };
        chat.push(ChatMessage { role, content });
    }
    let messages = chat;
    tok.apply_chat_template(&messages, add_generation_prompt)
        .map_err(to_pyerr)
}

/// Loads only the tokenizer of a model (a `.gguf` file or an HF directory).
#[pyfunction]
fn load_tokenizer(py: Python<'_>, path: PathBuf) -> PyResult<PyTokenizer> {
    let tok = py.detach(|| open_tokenizer(&path)).map_err(to_pyerr)?;
    Ok(PyTokenizer {
        inner: Arc::new(tok),
    })
}

/// The engine: a handle on the engine loop thread, shared by the Python object and its
/// streams.
#[pyclass(name = "Engine", module = "infire._core", frozen)]
pub struct PyEngine {
    handle: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    default_sampling: SamplingParams,
    kv_cache_tokens: usize,
    device: &'static str,
    device_name: String,
}

impl PyEngine {
    fn tokenize(&self, prompt: PromptArg) -> Result<(Option<String>, Vec<u32>), Error> {
        match prompt {
            PromptArg::Text(t) => {
                let ids = self.tokenizer.encode(&t, true)?;
                Ok((Some(t), ids))
            }
            PromptArg::Ids(ids) => Ok((None, ids)),
        }
    }
}

fn parse_request_id(id: &str) -> PyResult<u64> {
    id.parse()
        .map_err(|_| to_pyerr(Error::InvalidRequest(format!("unknown request id {id:?}"))))
}

#[pymethods]
impl PyEngine {
    /// `options`: the engine options of `infire.Engine` as a JSON object (see
    /// [`EngineArgs`]).
    #[new]
    #[pyo3(signature = (model, options="{}"))]
    fn new(py: Python<'_>, model: PathBuf, options: &str) -> PyResult<Self> {
        let args = engine_args(options)?;
        let launched = py.detach(|| launch(&model, &args)).map_err(to_pyerr)?;
        Ok(PyEngine {
            handle: launched.handle,
            tokenizer: launched.tokenizer,
            default_sampling: launched.default_sampling,
            kv_cache_tokens: launched.kv_capacity_tokens,
            device: launched.device,
            device_name: launched.device_name,
        })
    }

    /// `"cpu"` or `"cuda"`.
    #[getter]
    fn device(&self) -> &'static str {
        self.device
    }

    /// The GPU's name (e.g. "NVIDIA H200"), or "cpu".
    #[getter]
    fn device_name(&self) -> &str {
        &self.device_name
    }

    #[getter]
    fn tokenizer(&self) -> PyTokenizer {
        PyTokenizer {
            inner: self.tokenizer.clone(),
        }
    }

    #[getter]
    fn max_model_len(&self) -> usize {
        self.handle.limits().max_model_len
    }

    #[getter]
    fn kv_cache_tokens(&self) -> usize {
        self.kv_cache_tokens
    }

    /// Load and KV-cache usage: `num_running`, `num_waiting`, `kv_blocks_total`,
    /// `kv_blocks_used`, `prefix_cache_hit_rate`, `num_preemptions`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle.stats();
        let d = PyDict::new(py);
        d.set_item("num_running", s.num_running)?;
        d.set_item("num_waiting", s.num_waiting)?;
        d.set_item("kv_blocks_total", s.kv_blocks_total)?;
        d.set_item("kv_blocks_used", s.kv_blocks_used)?;
        d.set_item("prefix_cache_hit_rate", s.prefix_cache_hit_rate)?;
        d.set_item("num_preemptions", s.num_preemptions)?;
        Ok(d)
    }

    fn default_sampling_params(&self) -> PySamplingParams {
        PySamplingParams {
            inner: self.default_sampling.clone(),
        }
    }

    #[pyo3(signature = (messages, add_generation_prompt=true))]
    fn apply_chat_template(
        &self,
        messages: Vec<HashMap<String, String>>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        render_chat(&self.tokenizer, messages, add_generation_prompt)
    }

    /// Runs every prompt to completion, all scheduled together. Either every request is
    /// accepted or none is.
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Bound<'py, PyAny>>,
        params: Vec<PySamplingParams>,
        priorities: Vec<i32>,
    ) -> PyResult<Bound<'py, PyList>> {
        if prompts.len() != params.len() || prompts.len() != priorities.len() {
            return Err(to_pyerr(Error::InvalidRequest(format!(
                "{} prompts but {} sampling params and {} priorities",
                prompts.len(),
                params.len(),
                priorities.len()
            ))));
        }
        let mut texts = Vec::with_capacity(prompts.len());
        let mut ids = Vec::with_capacity(prompts.len());
        for p in &prompts {
            let p = PromptArg::from_py(p)?;
            let (text, tokens) = py.detach(|| self.tokenize(p)).map_err(to_pyerr)?;
            texts.push(text);
            ids.push(tokens);
        }
        let handle = &self.handle;
        let outputs = py
            .detach(|| -> Result<Vec<RequestOutput>, Error> {
                // Every prompt is checked before any is submitted: a bad one fails the batch
                // with nothing queued.
                let limits = handle.limits();
                for (tokens, p) in ids.iter().zip(&params) {
                    limits.check(tokens, &p.inner)?;
                }
                let mut submitted: Vec<Submitted> = Vec::with_capacity(ids.len());
                let requests = ids.into_iter().zip(params).zip(priorities);
                for ((tokens, p), priority) in requests {
                    match handle.submit(tokens, p.inner, priority) {
                        Ok(s) => submitted.push(s),
                        Err(e) => {
                            submitted.iter().for_each(|s| handle.abort(s.request_id));
                            return Err(e);
                        }
                    }
                }
                let ids: Vec<u64> = submitted.iter().map(|s| s.request_id).collect();
                let mut outputs = Vec::with_capacity(submitted.len());
                for s in submitted {
                    match s.wait() {
                        Ok(o) => outputs.push(o),
                        Err(e) => {
                            ids.iter().for_each(|&id| handle.abort(id));
                            return Err(e);
                        }
                    }
                }
                Ok(outputs)
            })
            .map_err(to_pyerr)?;
        let out = PyList::empty(py);
        for (o, text) in outputs.iter().zip(texts) {
            out.append(output_dict(py, o, text)?)?;
        }
        Ok(out)
    }

    /// Starts one request and returns an iterator of its cumulative outputs.
    #[pyo3(signature = (prompt, params, priority=0))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        params: PySamplingParams,
        priority: i32,
    ) -> PyResult<PyStream> {
        let prompt = PromptArg::from_py(prompt)?;
        let (text, ids) = py.detach(|| self.tokenize(prompt)).map_err(to_pyerr)?;
        let submitted = self
            .handle
            .submit(ids, params.inner, priority)
            .map_err(to_pyerr)?;
        Ok(PyStream {
            handle: self.handle.clone(),
            request_id: submitted.request_id,
            prompt: text,
            state: Mutex::new(Some(submitted)),
        })
    }

    /// Aborts a request by id; its stream ends with finish reason "abort". Unknown or finished
    /// requests are ignored.
    fn abort(&self, request_id: &str) -> PyResult<()> {
        self.handle.abort(parse_request_id(request_id)?);
        Ok(())
    }

    /// Stops the engine loop (requests still running fail).
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.handle.shutdown());
    }
}

/// Iterator over the cumulative outputs of one request. Dropping it aborts the request.
#[pyclass(name = "Stream", module = "infire._core", frozen)]
pub struct PyStream {
    handle: EngineHandle,
    request_id: u64,
    prompt: Option<String>,
    /// `None` once the final output was returned.
    state: Mutex<Option<Submitted>>,
}

#[pymethods]
impl PyStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[getter]
    fn request_id(&self) -> String {
        self.request_id.to_string()
    }

    /// The next cumulative output. The state's lock is taken and held only without the GIL:
    /// a thread holding the lock never waits for the GIL, so threads sharing one stream take
    /// turns instead of deadlocking (one waits for the lock, the other for the GIL).
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let next = py.detach(|| -> Result<Option<RequestOutput>, Error> {
            let mut state = self
                .state
                .lock()
                .map_err(|_| Error::Engine("the stream's state is poisoned".into()))?;
            let Some(sub) = state.as_mut() else {
                return Ok(None);
            };
            match sub.advance() {
                Ok(true) => {
                    let output = sub.output.clone();
                    if output.finished() {
                        *state = None;
                    }
                    Ok(Some(output))
                }
                Ok(false) => {
                    *state = None;
                    Ok(None)
                }
                Err(e) => {
                    *state = None;
                    Err(e)
                }
            }
        });
        match next.map_err(to_pyerr)? {
            Some(output) => output_dict(py, &output, self.prompt.clone()),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Aborts the request if it is still running.
    fn close(&self) {
        match self.state.try_lock() {
            Ok(mut state) => {
                if state.take().is_some() {
                    self.handle.abort(self.request_id);
                }
            }
            // A `__next__` on another thread holds the state while it waits for the engine
            // (without the GIL, which this thread holds): waiting for the lock here would
            // deadlock. Aborting ends that wait; the iterator then finds the request over.
            Err(_) => self.handle.abort(self.request_id),
        }
    }
}

impl Drop for PyStream {
    fn drop(&mut self) {
        self.close();
    }
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

fn output_dict<'py>(
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

/// Loads `model`, starts the engine and serves the OpenAI-compatible API until SIGTERM or
/// SIGINT (see `infire.serve`). Blocks without holding the GIL.
///
/// `shutdown_grace`, `header_timeout`, `body_timeout` (seconds) and `max_connections`: `None`
/// keeps the server's defaults (see `ServerConfig`).
#[pyfunction]
#[pyo3(signature = (model, host="127.0.0.1".to_string(), port=8000, api_key=None,
    served_model_name=None, max_waiting=256, options="{}", shutdown_grace=None,
    header_timeout=None, body_timeout=None, max_connections=None))]
#[allow(clippy::too_many_arguments)]
fn serve(
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
) -> PyResult<()> {
    let args = engine_args(options)?;
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
        ..ServerConfig::new(name)
    };
    let seconds = |name: &str, v: Option<Arg<f64>>, into: &mut std::time::Duration| {
        let Some(v) = v else { return Ok(()) };
        let s = v.get(name, "a number of seconds")?;
        *into = std::time::Duration::try_from_secs_f64(s).map_err(|_| {
            to_pyerr(Error::InvalidConfig(format!(
                "{name} must be a non-negative number of seconds, got {s}"
            )))
        })?;
        PyResult::Ok(())
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
        let launched = launch(&model, &args)?;
        server::run(
            launched.handle,
            launched.tokenizer,
            launched.default_sampling,
            config,
        )
    })
    .map_err(to_pyerr)
}

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

/// Number of CUDA devices this build can use (0 without a driver or GPU).
#[pyfunction]
fn cuda_device_count() -> usize {
    crate::engine::launch::cuda_device_count()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PySamplingParams>()?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyStream>()?;
    m.add_function(wrap_pyfunction!(load_tokenizer, m)?)?;
    m.add_function(wrap_pyfunction!(serve, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    m.add_function(wrap_pyfunction!(engine_args_schema, m)?)?;
    #[cfg(feature = "cuda")]
    {
        m.add_function(wrap_pyfunction!(kernel_names, m)?)?;
        m.add_function(wrap_pyfunction!(kernel_source, m)?)?;
        m.add_function(wrap_pyfunction!(compile_kernel, m)?)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// The CUDA kernel files (`kernels/cuda/*.cu` stems).
#[cfg(feature = "cuda")]
#[pyfunction]
fn kernel_names() -> Vec<&'static str> {
    crate::backend::cuda::jit::names()
}

/// The full source NVRTC compiles for kernel file `name` (common header included).
#[cfg(feature = "cuda")]
#[pyfunction]
fn kernel_source(name: &str) -> PyResult<String> {
    crate::backend::cuda::jit::source(name).map_err(to_pyerr)
}

/// Compiles kernel file `name` with NVRTC for `arch` (e.g. "sm_90a") to a cubin or PTX.
#[cfg(feature = "cuda")]
#[pyfunction]
#[pyo3(signature = (name, arch, defines=None, dtype="bfloat16", target="cubin"))]
fn compile_kernel<'py>(
    py: Python<'py>,
    name: &str,
    arch: &str,
    defines: Option<&Bound<'py, PyDict>>,
    dtype: &str,
    target: &str,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    use crate::backend::cuda::jit::{compile, KernelDtype, KernelSpec, Target};
    let dtype = KernelDtype::from_name(dtype).ok_or_else(|| {
        to_pyerr(Error::InvalidRequest(format!(
            "dtype must be \"bfloat16\" or \"float16\", got {dtype:?}"
        )))
    })?;
    let target = match target {
        "cubin" => Target::Cubin,
        "ptx" => Target::Ptx,
        t => {
            return Err(to_pyerr(Error::InvalidRequest(format!(
                "target must be \"cubin\" or \"ptx\", got {t:?}"
            ))))
        }
    };
    let mut defs = Vec::new();
    if let Some(d) = defines {
        for (k, v) in d.iter() {
            let value = if v.is_none() {
                None
            } else {
                Some(v.str()?.to_string())
            };
            defs.push((k.extract::<String>()?, value));
        }
    }
    let spec = KernelSpec {
        name: name.to_string(),
        arch: arch.to_string(),
        dtype,
        defines: defs,
    };
    let bytes = py
        .detach(|| compile(&spec, target, None))
        .map_err(to_pyerr)?;
    Ok(pyo3::types::PyBytes::new(py, &bytes))
}
