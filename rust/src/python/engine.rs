//! `infire._core.Engine`: a handle on the engine loop thread, shared by the Python object and
//! its streams.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::convert::{invalid, output_dict, parse_request_id, to_pyerr, PromptArg};
use super::engine_args;
use super::sampling_params::PySamplingParams;
use super::stream::PyStream;
use super::tokenizer::{render_chat, PyTokenizer};
use crate::backend::SleepReport;
use crate::engine::engine_loop::{EngineHandle, Submitted};
use crate::engine::launch::launch;
use crate::engine::RequestOutput;
use crate::error::Error;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

#[pyclass(name = "Engine", module = "infire._core", frozen)]
pub struct PyEngine {
    handle: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    default_sampling: SamplingParams,
    kv_cache_tokens: usize,
    device: &'static str,
    device_name: String,
    fingerprint: String,
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

    /// Submits every request (all or none: a failed submission aborts those before it) and
    /// waits for each in order, calling `progress` (with the GIL) after each one finishes.
    fn run_all(
        &self,
        ids: Vec<Vec<u32>>,
        params: Vec<PySamplingParams>,
        priorities: Vec<i32>,
        progress: Option<&Py<PyAny>>,
    ) -> PyResult<Vec<RequestOutput>> {
        let handle = &self.handle;
        // Every prompt is checked before any is submitted: a bad one fails the batch with
        // nothing queued.
        let limits = handle.limits();
        for (tokens, p) in ids.iter().zip(&params) {
            limits.check(tokens, &p.inner).map_err(to_pyerr)?;
        }
        let mut submitted: Vec<Submitted> = Vec::with_capacity(ids.len());
        for ((tokens, p), priority) in ids.into_iter().zip(params).zip(priorities) {
            match handle.submit(tokens, p.inner, priority) {
                Ok(s) => submitted.push(s),
                Err(e) => {
                    submitted.iter().for_each(|s| handle.abort(s.request_id));
                    return Err(to_pyerr(e));
                }
            }
        }
        let request_ids: Vec<u64> = submitted.iter().map(|s| s.request_id).collect();
        let abort_all = || request_ids.iter().for_each(|&id| handle.abort(id));
        let mut outputs = Vec::with_capacity(submitted.len());
        for s in submitted {
            let o = s.wait().map_err(|e| {
                abort_all();
                to_pyerr(e)
            })?;
            outputs.push(o);
            if let Some(cb) = progress {
                Python::attach(|py| cb.call0(py)).inspect_err(|_| abort_all())?;
            }
        }
        Ok(outputs)
    }
}

#[pymethods]
impl PyEngine {
    /// `options`: the engine options of `infire.Engine` as a JSON object (see
    /// [`crate::engine::EngineArgs`]).
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
            fingerprint: launched.fingerprint,
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

    /// The model files' content fingerprint, `fp_<sha256 hex>` (the server's
    /// `system_fingerprint`).
    #[getter]
    fn fingerprint(&self) -> &str {
        &self.fingerprint
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
    /// `kv_blocks_used`, `prefix_cache_hit_rate`, `num_preemptions`; the cache's capacity and
    /// element type (`kv_cache_tokens`, `kv_cache_dtype`) and the weights' `quantization`;
    /// jump-forward's `structured_forced_tokens` and `structured_steps_saved`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle.stats();
        let d = PyDict::new(py);
        d.set_item("num_running", s.num_running)?;
        d.set_item("num_waiting", s.num_waiting)?;
        d.set_item("kv_blocks_total", s.kv_blocks_total)?;
        d.set_item("kv_blocks_used", s.kv_blocks_used)?;
        d.set_item("prefix_cache_hit_rate", s.prefix_cache_hit_rate)?;
        d.set_item("num_preemptions", s.num_preemptions)?;
        d.set_item("kv_cache_tokens", s.kv_blocks_total * s.kv_block_size)?;
        d.set_item("kv_cache_dtype", s.kv_cache_dtype)?;
        d.set_item("quantization", s.quantization)?;
        d.set_item("structured_forced_tokens", s.structured_forced_tokens)?;
        d.set_item("structured_steps_saved", s.structured_steps_saved)?;
        Ok(d)
    }

    fn default_sampling_params(&self) -> PySamplingParams {
        PySamplingParams {
            inner: self.default_sampling.clone(),
        }
    }

    #[pyo3(signature = (messages, add_generation_prompt=true, chat_template_kwargs=None))]
    fn apply_chat_template(
        &self,
        messages: Vec<HashMap<String, String>>,
        add_generation_prompt: bool,
        chat_template_kwargs: Option<&str>,
    ) -> PyResult<String> {
        render_chat(
            &self.tokenizer,
            messages,
            add_generation_prompt,
            chat_template_kwargs,
        )
    }

    /// Runs every prompt to completion, all scheduled together. Either every request is
    /// accepted or none is. `progress` (a callable, no arguments) is called as each request
    /// finishes.
    #[pyo3(signature = (prompts, params, priorities, progress=None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Bound<'py, PyAny>>,
        params: Vec<PySamplingParams>,
        priorities: Vec<i32>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if prompts.len() != params.len() || prompts.len() != priorities.len() {
            return Err(invalid(format!(
                "{} prompts but {} sampling params and {} priorities",
                prompts.len(),
                params.len(),
                priorities.len()
            )));
        }
        let mut texts = Vec::with_capacity(prompts.len());
        let mut ids = Vec::with_capacity(prompts.len());
        for p in &prompts {
            let p = PromptArg::from_py(p)?;
            let (text, tokens) = py.detach(|| self.tokenize(p)).map_err(to_pyerr)?;
            texts.push(text);
            ids.push(tokens);
        }
        let progress = progress.as_ref();
        let outputs = py.detach(|| self.run_all(ids, params, priorities, progress))?;
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

    /// Frees the weights' and the KV pool's device memory with the engine alive (CUDA): the
    /// weights go to pinned host memory, the KV pool and its prefix cache are dropped, and
    /// requests running end with an error. Requests submitted while asleep wait for `wake`.
    /// Returns what it did (`seconds`, `device_bytes` freed, `copied_bytes`, `copy_seconds`).
    #[pyo3(signature = (level=1))]
    fn sleep<'py>(&self, py: Python<'py>, level: u8) -> PyResult<Bound<'py, PyDict>> {
        if level != 1 {
            return Err(invalid(format!(
                "sleep level {level} is not supported: level 1 keeps the weights in host memory"
            )));
        }
        let r = py
            .detach(|| self.handle.sleep("the engine was put to sleep"))
            .map_err(to_pyerr)?;
        sleep_report(py, r)
    }

    /// Brings the memory back after `sleep` (the weights as they were, the KV pool empty, at
    /// the same addresses: nothing is recaptured). Returns what it did, as `sleep` does.
    fn wake<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.handle.wake()).map_err(to_pyerr)?;
        sleep_report(py, r)
    }

    /// Whether the engine's memory is asleep.
    #[getter]
    fn is_sleeping(&self) -> bool {
        self.handle.is_asleep()
    }

    /// Stops the engine loop (requests still running fail).
    fn shutdown(&self, py: Python<'_>) {
        py.detach(|| self.handle.shutdown());
    }
}

/// A sleep's or a wake's report as a dict.
fn sleep_report(py: Python<'_>, r: SleepReport) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seconds", r.seconds)?;
    d.set_item("device_bytes", r.device_bytes)?;
    d.set_item("copied_bytes", r.copied_bytes)?;
    d.set_item("copy_seconds", r.copy_seconds)?;
    Ok(d)
}
