//! `infire.SamplingParams`: vLLM's sampling parameters, checked in Rust
//! ([`SamplingParams::validate`]).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::convert::{strings, to_pyerr, token_ids, Arg};
use super::structured;
use crate::sampling::SamplingParams;

/// Sampling parameters, validated in Rust (see `infire/_core.pyi` for the docs).
#[pyclass(name = "SamplingParams", module = "infire._core", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PySamplingParams {
    pub inner: SamplingParams,
}

/// `v` as Python shows a float: the shortest decimal that reads back as the `f32` (`0.8`, not
/// `0.800000011920929`), so that `SamplingParams(temperature=0.8).temperature == 0.8`.
fn py_float(v: f32) -> f64 {
    format!("{v}").parse().unwrap_or(v as f64)
}

/// An `Option` as Python writes it.
fn py_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_string(), |v| v.to_string())
}

/// A float as Python's `repr` writes it.
fn float_repr(v: f32) -> String {
    let s = format!("{}", py_float(v));
    if s.contains(['.', 'e', 'n', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

#[pymethods]
impl PySamplingParams {
    #[new]
    #[pyo3(signature = (n=Arg::given(1), max_tokens=Some(Arg::given(16)), temperature=Arg::given(1.0),
        top_p=Arg::given(1.0), top_k=Arg::given(-1), min_p=Arg::given(0.0), seed=None, stop=None,
        stop_token_ids=None, ignore_eos=Arg::given(false), repetition_penalty=Arg::given(1.0),
        presence_penalty=Arg::given(0.0), frequency_penalty=Arg::given(0.0), logprobs=None,
        prompt_logprobs=None, min_tokens=Arg::given(0), include_stop_str_in_output=Arg::given(false),
        skip_special_tokens=Arg::given(true), structured_outputs=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n: Arg<usize>,
        max_tokens: Option<Arg<usize>>,
        temperature: Arg<f64>,
        top_p: Arg<f64>,
        top_k: Arg<i32>,
        min_p: Arg<f64>,
        seed: Option<Arg<u64>>,
        stop: Option<&Bound<'_, PyAny>>,
        stop_token_ids: Option<&Bound<'_, PyAny>>,
        ignore_eos: Arg<bool>,
        repetition_penalty: Arg<f64>,
        presence_penalty: Arg<f64>,
        frequency_penalty: Arg<f64>,
        logprobs: Option<Arg<usize>>,
        prompt_logprobs: Option<Arg<usize>>,
        min_tokens: Arg<usize>,
        include_stop_str_in_output: Arg<bool>,
        skip_special_tokens: Arg<bool>,
        structured_outputs: Option<&Bound<'_, PyAny>>,
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
                .filter(|s| !s.is_none())
                .map(|v| strings("stop", v))
                .transpose()?
                .unwrap_or_default(),
            include_stop_str_in_output: include_stop_str_in_output
                .get("include_stop_str_in_output", "a bool")?,
            min_tokens: min_tokens.get("min_tokens", COUNT)?,
            skip_special_tokens: skip_special_tokens.get("skip_special_tokens", "a bool")?,
            stop_token_ids: stop_token_ids
                .filter(|s| !s.is_none())
                .map(|v| token_ids("stop_token_ids", v))
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
            structured_outputs: structured::from_py(structured_outputs)?,
            grammar: None,
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
    fn min_tokens(&self) -> usize {
        self.inner.min_tokens
    }
    #[getter]
    fn temperature(&self) -> f64 {
        py_float(self.inner.temperature)
    }
    #[getter]
    fn top_p(&self) -> f64 {
        py_float(self.inner.top_p)
    }
    #[getter]
    fn top_k(&self) -> i32 {
        self.inner.top_k
    }
    #[getter]
    fn min_p(&self) -> f64 {
        py_float(self.inner.min_p)
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
    fn include_stop_str_in_output(&self) -> bool {
        self.inner.include_stop_str_in_output
    }
    #[getter]
    fn skip_special_tokens(&self) -> bool {
        self.inner.skip_special_tokens
    }
    #[getter]
    fn ignore_eos(&self) -> bool {
        self.inner.ignore_eos
    }
    #[getter]
    fn repetition_penalty(&self) -> f64 {
        py_float(self.inner.repetition_penalty)
    }
    #[getter]
    fn presence_penalty(&self) -> f64 {
        py_float(self.inner.presence_penalty)
    }
    #[getter]
    fn frequency_penalty(&self) -> f64 {
        py_float(self.inner.frequency_penalty)
    }
    #[getter]
    fn logprobs(&self) -> Option<usize> {
        self.inner.logprobs
    }
    #[getter]
    fn prompt_logprobs(&self) -> Option<usize> {
        self.inner.prompt_logprobs
    }
    #[getter]
    fn structured_outputs<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let spec = self.inner.structured_outputs.as_ref();
        spec.map(|s| structured::to_py(py, s)).transpose()
    }

    /// A copy (the object is immutable, so a copy is only needed where vLLM code asks for one).
    fn clone(&self) -> Self {
        self.clone_inner()
    }

    fn __copy__(&self) -> Self {
        self.clone_inner()
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> Self {
        self.clone_inner()
    }

    /// Pickles as the keyword arguments that rebuild it.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyDict>,))> {
        let rebuild = py.import("infire._sampling")?.getattr("_from_kwargs")?;
        Ok((rebuild, (slf.borrow().kwargs(py)?,)))
    }

    /// Every field by name, as `SamplingParams(**d)` takes them back.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.kwargs(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let p = &self.inner;
        let stop = PyList::new(py, &p.stop)?.repr()?.to_string();
        Ok(format!(
            "SamplingParams(n={}, max_tokens={}, min_tokens={}, temperature={}, top_p={}, \
             top_k={}, min_p={}, seed={}, stop={stop}, stop_token_ids={:?}, \
             include_stop_str_in_output={}, skip_special_tokens={}, ignore_eos={}, \
             repetition_penalty={}, presence_penalty={}, frequency_penalty={}, logprobs={}, \
             prompt_logprobs={}, structured_outputs={})",
            p.n,
            py_opt(p.max_tokens),
            p.min_tokens,
            float_repr(p.temperature),
            float_repr(p.top_p),
            p.top_k,
            float_repr(p.min_p),
            py_opt(p.seed),
            p.stop_token_ids,
            py_bool(p.include_stop_str_in_output),
            py_bool(p.skip_special_tokens),
            py_bool(p.ignore_eos),
            float_repr(p.repetition_penalty),
            float_repr(p.presence_penalty),
            float_repr(p.frequency_penalty),
            py_opt(p.logprobs),
            py_opt(p.prompt_logprobs),
            match self.structured_outputs(py)? {
                Some(s) => s.repr()?.to_string(),
                None => "None".into(),
            },
        ))
    }
}

/// A bool as Python writes it.
fn py_bool(v: bool) -> &'static str {
    if v {
        "True"
    } else {
        "False"
    }
}

impl PySamplingParams {
    fn clone_inner(&self) -> Self {
        PySamplingParams {
            inner: self.inner.clone(),
        }
    }

    fn kwargs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.inner;
        let d = PyDict::new(py);
        d.set_item("n", p.n)?;
        d.set_item("max_tokens", p.max_tokens)?;
        d.set_item("min_tokens", p.min_tokens)?;
        d.set_item("temperature", py_float(p.temperature))?;
        d.set_item("top_p", py_float(p.top_p))?;
        d.set_item("top_k", p.top_k)?;
        d.set_item("min_p", py_float(p.min_p))?;
        d.set_item("seed", p.seed)?;
        d.set_item("stop", &p.stop)?;
        d.set_item("stop_token_ids", &p.stop_token_ids)?;
        d.set_item("include_stop_str_in_output", p.include_stop_str_in_output)?;
        d.set_item("skip_special_tokens", p.skip_special_tokens)?;
        d.set_item("ignore_eos", p.ignore_eos)?;
        d.set_item("repetition_penalty", py_float(p.repetition_penalty))?;
        d.set_item("presence_penalty", py_float(p.presence_penalty))?;
        d.set_item("frequency_penalty", py_float(p.frequency_penalty))?;
        d.set_item("logprobs", p.logprobs)?;
        d.set_item("prompt_logprobs", p.prompt_logprobs)?;
        d.set_item("structured_outputs", self.structured_outputs(py)?)?;
        Ok(d)
    }
}
