//! A request's structured-output fields → [`StructuredOutputs`]: OpenAI's `response_format`
//! and vLLM's `structured_outputs` and `guided_*` extensions; at most one may constrain.

use serde_json::Value;

use super::errors::ApiError;
use super::openai_types::SamplingFields;
use crate::structured::StructuredOutputs;

fn bad(msg: impl Into<String>, field: &str) -> ApiError {
    ApiError::bad_request(msg.into(), Some(field))
}

/// A schema given as an object (or as its JSON text, as vLLM also takes it).
fn schema_text(v: &Value, field: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(_) | Value::Bool(true) => Ok(v.to_string()),
        _ => Err(bad(format!("{field} must be a JSON schema object"), field)),
    }
}

fn string(v: &Value, field: &str) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| bad(format!("{field} must be a string"), field))
}

fn choices(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let list = v.as_array().and_then(|a| {
        a.iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
    });
    list.ok_or_else(|| bad(format!("{field} must be a list of strings"), field))
}

/// `response_format`: `text` (nothing), `json_object`, or `json_schema` with its `schema`
/// and `strict` (non-strict schemas may use keywords llguidance ignores).
fn response_format(v: &Value) -> Result<Option<StructuredOutputs>, ApiError> {
    const F: &str = "response_format";
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(StructuredOutputs::JsonObject)),
        Some("json_schema") => {
            let js = v
                .get("json_schema")
                .filter(|j| j.is_object())
                .ok_or_else(|| bad("response_format json_schema needs a json_schema object", F))?;
            let schema = js
                .get("schema")
                .ok_or_else(|| bad("response_format json_schema needs a schema", F))?;
            let strict = js.get("strict").and_then(Value::as_bool).unwrap_or(false);
            Ok(Some(StructuredOutputs::Json {
                schema: schema_text(schema, F)?,
                strict,
            }))
        }
        other => Err(bad(
            format!(
                "response_format type must be text, json_object or json_schema, got {}",
                other.map_or("(none)".to_string(), |t| format!("{t:?}"))
            ),
            F,
        )),
    }
}

/// vLLM's `structured_outputs` object: one of json, regex, choice, grammar, json_object.
fn structured_outputs(v: &Value) -> Result<Option<StructuredOutputs>, ApiError> {
    const F: &str = "structured_outputs";
    let Some(obj) = v.as_object() else {
        return Err(bad("structured_outputs must be an object", F));
    };
    let set: Vec<(&String, &Value)> = obj.iter().filter(|(_, v)| !v.is_null()).collect();
    let mut found = Vec::new();
    for (k, v) in set {
        let spec = match k.as_str() {
            "json" => StructuredOutputs::Json {
                schema: schema_text(v, F)?,
                strict: true,
            },
            "regex" => StructuredOutputs::Regex(string(v, F)?),
            "choice" => StructuredOutputs::Choice(choices(v, F)?),
            "grammar" => StructuredOutputs::Grammar(string(v, F)?),
            "json_object" if v == &Value::Bool(true) => StructuredOutputs::JsonObject,
            "json_object" => continue,
            // vLLM's tuning knobs that change nothing here.
            "disable_fallback"
            | "disable_any_whitespace"
            | "disable_additional_properties"
            | "whitespace_pattern" => continue,
            other => {
                return Err(bad(
                    format!("structured_outputs.{other} is not supported"),
                    F,
                ))
            }
        };
        found.push(spec);
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(bad(
            "structured_outputs must set only one of json, regex, choice, grammar, json_object",
            F,
        )),
    }
}

/// The one constraint a request asks for (with the field that asked), or `None`.
pub fn requested(
    f: &SamplingFields,
) -> Result<Option<(StructuredOutputs, &'static str)>, ApiError> {
    let mut found: Vec<(StructuredOutputs, &'static str)> = Vec::new();
    let given = |v: &Option<Value>| v.as_ref().filter(|v| !v.is_null()).cloned();
    if let Some(v) = given(&f.response_format) {
        found.extend(response_format(&v)?.map(|s| (s, "response_format")));
    }
    if let Some(v) = given(&f.structured_outputs) {
        found.extend(structured_outputs(&v)?.map(|s| (s, "structured_outputs")));
    }
    if let Some(v) = given(&f.guided_json) {
        let schema = schema_text(&v, "guided_json")?;
        found.push((
            StructuredOutputs::Json {
                schema,
                strict: true,
            },
            "guided_json",
        ));
    }
    if let Some(v) = given(&f.guided_regex) {
        found.push((
            StructuredOutputs::Regex(string(&v, "guided_regex")?),
            "guided_regex",
        ));
    }
    if let Some(v) = given(&f.guided_choice) {
        found.push((
            StructuredOutputs::Choice(choices(&v, "guided_choice")?),
            "guided_choice",
        ));
    }
    if let Some(v) = given(&f.guided_grammar) {
        let g = string(&v, "guided_grammar")?;
        found.push((StructuredOutputs::Grammar(g), "guided_grammar"));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, n)| *n).collect();
        return Err(bad(
            format!(
                "only one output constraint may be given, got {}",
                names.join(", ")
            ),
            names[1],
        ));
    }
    Ok(found.pop())
}
