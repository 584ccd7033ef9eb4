//! Option lists declared once: [`declare_options!`] turns one list of `name: type = default`
//! fields with their doc comments into a serde struct, its `Default` and its schema (name,
//! type, default, help), from which the Python API and the command line build their keyword
//! arguments and flags. Used for the engine's options (`engine::EngineArgs`) and the
//! server's (`server::ServerArgs`).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Declares a struct of options from one list of `name: type = default` fields with their
/// docs, and derives from the same list its `Default` and its `schema()`.
macro_rules! declare_options {
    (
        $(#[doc = $sdoc:literal])+
        $struct:ident {
            $( $(#[doc = $doc:literal])+ $name:ident : $ty:ty = $default:expr, )+
        }
    ) => {
        $(#[doc = $sdoc])+
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $struct {
            $( $(#[doc = $doc])+ pub $name: $ty, )+
        }

        impl Default for $struct {
            fn default() -> Self {
                $struct { $( $name: $default, )+ }
            }
        }

        impl $struct {
            /// Name, type, default (JSON) and help of every option, in declaration order.
            pub fn schema() -> Vec<$crate::options::OptionSchema> {
                let defaults = $struct::default();
                vec![$(
                    $crate::options::OptionSchema {
                        name: stringify!($name),
                        ty: $crate::options::OptionType::of(stringify!($ty)),
                        default: serde_json::to_value(&defaults.$name)
                            .expect("option defaults are plain JSON values"),
                        help: $crate::options::help_text(&[$($doc),+]),
                    },
                )+]
            }
        }
    };
}
pub(crate) use declare_options;

/// The type of an option, as the Python layer and the command line need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionType {
    Int,
    OptionalInt,
    Float,
    Str,
    OptionalStr,
    Bool,
    OptionalBool,
}

impl OptionType {
    /// The option type of a field's Rust type (as `stringify!` writes it).
    pub fn of(rust_type: &str) -> OptionType {
        match rust_type.replace(' ', "").as_str() {
            "usize" | "u64" | "u16" => OptionType::Int,
            "Option<usize>" => OptionType::OptionalInt,
            "f64" => OptionType::Float,
            "String" => OptionType::Str,
            "Option<String>" => OptionType::OptionalStr,
            "bool" => OptionType::Bool,
            "Option<bool>" => OptionType::OptionalBool,
            other => panic!("option of unsupported type {other}"),
        }
    }
}

/// One option as a `schema()` describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptionSchema {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub ty: OptionType,
    pub default: serde_json::Value,
    pub help: String,
}

/// The doc comment lines of a field as one paragraph.
pub fn help_text(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

/// Parses `what` options (e.g. "engine") given as a JSON object into `T`, whose options are
/// `schema`: an unknown name or a value of the wrong type is an [`Error::InvalidConfig`] that
/// names the option.
pub fn parse_options<T: DeserializeOwned>(
    json: &str,
    what: &str,
    schema: &[OptionSchema],
) -> Result<T> {
    let bad = |m: String| Error::InvalidConfig(m);
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("{what} options: {e}")))?;
    let serde_json::Value::Object(options) = value else {
        return Err(bad(format!("{what} options must be a JSON object")));
    };
    // Option by option first, so that an error names the option it is about (serde's type
    // errors name only a position in the text).
    let known: Vec<&str> = schema.iter().map(|o| o.name).collect();
    for (name, v) in &options {
        if !known.contains(&name.as_str()) {
            return Err(bad(format!(
                "unknown {what} option {name:?}; the options are {}",
                known.join(", ")
            )));
        }
        let one = serde_json::Value::Object([(name.clone(), v.clone())].into_iter().collect());
        serde_json::from_value::<T>(one)
            .map_err(|e| bad(format!("{what} option {name} = {v}: {e}")))?;
    }
    serde_json::from_value(serde_json::Value::Object(options))
        .map_err(|e| bad(format!("{what} options: {e}")))
}
