//! `structured_outputs=` of `SamplingParams`: vLLM's `StructuredOutputsParams` (or a dict with
//! its keys) ↔ [`StructuredOutputs`]. A JSON schema may be a `str`, a `dict` or a pydantic
//! class; exactly one kind must be given.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::convert::{describe, invalid, strings};
use crate::structured::StructuredOutputs;

/// The kinds, as vLLM names them.
const KINDS: [&str; 5] = ["json", "regex", "choice", "grammar", "json_object"];

/// Field `name` of `obj` (a dict's key or an attribute), `None` when absent or `None`.
fn field<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    let v = if let Ok(d) = obj.cast::<PyDict>() {
        d.get_item(name)?
    } else if obj.hasattr(name)? {
        Some(obj.getattr(name)?)
    } else {
        None
    };
    Ok(v.filter(|v| !v.is_none()))
}

/// The JSON text of a schema given as text, a JSON-able value or a pydantic model class.
fn schema_text(v: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(s.to_string());
    }
    let py = v.py();
    let schema = if v.hasattr("model_json_schema")? {
        v.call_method0("model_json_schema")?
    } else {
        v.clone()
    };
    py.import("json")?
        .call_method1("dumps", (schema,))
        .map_err(|_| invalid(format!("json must be a JSON schema, got {}", describe(v))))?
        .extract()
}

/// `structured_outputs` as the core takes it; `None` when not given.
pub fn from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<StructuredOutputs>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let mut given = Vec::new();
    for kind in KINDS {
        if let Some(v) = field(obj, kind)? {
            given.push((kind, v));
        }
    }
    let (kind, v) = match given.len() {
        1 => given.pop().expect("one"),
        0 => {
            return Err(invalid(format!(
                "structured_outputs must set one of {} (got {})",
                KINDS.join(", "),
                describe(obj)
            )))
        }
        _ => {
            let names: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
            return Err(invalid(format!(
                "structured_outputs must set only one of {}, got {}",
                KINDS.join(", "),
                names.join(" and ")
            )));
        }
    };
    let text = |want: &str| -> PyResult<String> {
        v.extract::<String>()
            .map_err(|_| invalid(format!("structured_outputs.{kind} must be {want}")))
    };
    Ok(Some(match kind {
        "json" => StructuredOutputs::Json {
            schema: schema_text(&v)?,
            strict: true,
        },
        "regex" => StructuredOutputs::Regex(text("a string")?),
        "grammar" => StructuredOutputs::Grammar(text("a Lark grammar string")?),
        "choice" => StructuredOutputs::Choice(strings("structured_outputs.choice", &v)?),
        _ => match v.extract::<bool>() {
            Ok(true) => StructuredOutputs::JsonObject,
            _ => return Err(invalid("structured_outputs.json_object must be True")),
        },
    }))
}

/// `spec` as Python sees it: an `infire.StructuredOutputsParams`.
pub fn to_py<'py>(py: Python<'py>, spec: &StructuredOutputs) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    match spec {
        StructuredOutputs::Json { schema, .. } => kwargs.set_item("json", schema)?,
        StructuredOutputs::JsonObject => kwargs.set_item("json_object", true)?,
        StructuredOutputs::Regex(r) => kwargs.set_item("regex", r)?,
        StructuredOutputs::Choice(c) => kwargs.set_item("choice", c)?,
        StructuredOutputs::Grammar(g) => kwargs.set_item("grammar", g)?,
    }
    py.import("infire._sampling")?
        .getattr("StructuredOutputsParams")?
        .call((), Some(&kwargs))
}
