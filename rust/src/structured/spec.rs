//! What a request constrains its output to ([`StructuredOutputs`], vLLM's kinds), and the
//! llguidance grammar that says it.

use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The shape a request's output must have (vLLM's `StructuredOutputsParams`: one of them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StructuredOutputs {
    /// A JSON Schema (its JSON text); `strict: false` ignores keywords llguidance does not
    /// support instead of refusing the schema.
    Json { schema: String, strict: bool },
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A regular expression (Rust `regex` syntax) the whole output matches.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect: `start: ...`, `%json {...}` and regex terminals).
    Grammar(String),
}

/// How JSON is laid out: one space after `,` and `:` and no other whitespace, as Python's
/// `json.dumps` writes it. Free whitespace lets a small model pad forever; fixed separators
/// keep every output short and still valid JSON.
pub fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

impl StructuredOutputs {
    /// The kind's name, as vLLM spells the field.
    pub fn kind(&self) -> &'static str {
        match self {
            StructuredOutputs::Json { .. } => "json",
            StructuredOutputs::JsonObject => "json_object",
            StructuredOutputs::Regex(_) => "regex",
            StructuredOutputs::Choice(_) => "choice",
            StructuredOutputs::Grammar(_) => "grammar",
        }
    }

    /// The llguidance grammar; a schema that is not JSON, or an empty choice list, is an
    /// [`Error::InvalidRequest`] (what llguidance itself refuses shows when compiled).
    pub fn to_grammar(&self) -> Result<TopLevelGrammar> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        Ok(match self {
            StructuredOutputs::Json { schema, strict } => {
                let mut schema: Value = match serde_json::from_str(schema) {
                    Ok(v) => v,
                    Err(e) => return bad(format!("JSON schema is not valid JSON: {e}")),
                };
                let Some(obj) = schema.as_object_mut() else {
                    return bad("JSON schema must be an object (or true)".into());
                };
                let mut opts = json_layout();
                opts["lenient"] = json!(!strict);
                obj.insert("x-guidance".into(), opts);
                TopLevelGrammar::from_json_schema(schema)
            }
            StructuredOutputs::JsonObject => TopLevelGrammar::from_json_schema(
                json!({"type": "object", "x-guidance": json_layout()}),
            ),
            StructuredOutputs::Regex(rx) => TopLevelGrammar::from_regex(rx),
            StructuredOutputs::Choice(choices) => {
                if choices.is_empty() {
                    return bad("choice must list at least one string".into());
                }
                let alts: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
                TopLevelGrammar::from_regex(&format!("({})", alts.join("|")))
            }
            StructuredOutputs::Grammar(lark) => {
                if lark.trim().is_empty() {
                    return bad("grammar must not be empty".into());
                }
                TopLevelGrammar::from_lark(lark.clone())
            }
        })
    }

    /// The cache key: the kind and its text, so that equal requests share one compilation.
    pub fn cache_key(&self) -> String {
        match self {
            StructuredOutputs::Json { schema, strict } => format!("json:{strict}:{schema}"),
            StructuredOutputs::JsonObject => "json_object".into(),
            StructuredOutputs::Regex(r) => format!("regex:{r}"),
            StructuredOutputs::Choice(c) => format!("choice:{}", json!(c)),
            StructuredOutputs::Grammar(g) => format!("grammar:{g}"),
        }
    }
}

/// `s` as a regex that matches exactly `s`.
fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_invalid_requests() {
        let cases = [
            StructuredOutputs::Json {
                schema: "{not json".into(),
                strict: true,
            },
            StructuredOutputs::Json {
                schema: "[1]".into(),
                strict: true,
            },
            StructuredOutputs::Choice(vec![]),
            StructuredOutputs::Grammar("  ".into()),
        ];
        for c in cases {
            let e = c.to_grammar().unwrap_err();
            assert!(matches!(e, Error::InvalidRequest(_)), "{c:?}: {e}");
        }
    }

    #[test]
    fn regex_escape_keeps_text_literal() {
        assert_eq!(escape_regex("a.b|c"), "a\\.b\\|c");
        assert_eq!(escape_regex("plain"), "plain");
    }
}
