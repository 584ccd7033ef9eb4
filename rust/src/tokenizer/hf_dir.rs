//! Loading the tokenizer of a Hugging Face model directory: `tokenizer.json` (the `tokenizers`
//! serialization), `tokenizer_config.json` (special tokens, `add_bos_token` / `add_eos_token`,
//! chat template) and `chat_template.jinja` (where newer repositories keep the template; it takes
//! precedence, as in transformers). `generation_config.json` is not read here: the engine takes
//! its extra EOS ids from there.

use std::path::Path;

use serde_json::Value;

use super::special_tokens::{NamedToken, SpecialTokens};
use crate::error::{Error, Result};

/// The tokenizer file of a model directory.
const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer configuration file of a model directory (optional).
const CONFIG_FILE: &str = "tokenizer_config.json";
/// A chat template kept as its own file (optional).
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The name transformers gives the template it uses when several are listed.
const DEFAULT_TEMPLATE_NAME: &str = "default";

/// A tokenizer loaded from a model directory, with what its configuration says about its use.
pub(crate) struct HfTokenizer {
    /// The tokenizer, with the named special tokens registered and, where the configuration sets
    /// `add_bos_token` / `add_eos_token`, the matching post-processor.
    pub tokenizer: tokenizers::Tokenizer,
    /// The named special tokens and the add-BOS/EOS flags.
    pub special: SpecialTokens,
    /// The default chat template, if the directory has one.
    pub chat_template: Option<String>,
}

/// Loads the tokenizer of the model directory `dir`.
///
/// Errors: [`Error::Io`] when `tokenizer.json` (or a present config file) cannot be read,
/// [`Error::InvalidModel`] when a file is not what it should be. A special token the
/// configuration names but the vocabulary lacks is treated as absent.
pub(crate) fn load(dir: &Path) -> Result<HfTokenizer> {
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let bytes = std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
    // The `tokenizers` crate panics on some malformed files (a decoder whose JSON does not
    // deserialize, found by fuzzing): a bad file must be an error like any other.
    let parsed =
        std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes)).map_err(|_| {
            Error::invalid_model(&tokenizer_path, "malformed tokenizer (parser panicked)")
        })?;
    let mut tokenizer = parsed.map_err(|e| Error::invalid_model(&tokenizer_path, e.to_string()))?;
    // transformers truncates or pads only when a call asks for it.
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::invalid_model(&tokenizer_path, e.to_string()))?;
    tokenizer.with_padding(None);

    let config_path = dir.join(CONFIG_FILE);
    let config = match std::fs::read(&config_path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| Error::invalid_model(&config_path, e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(Error::io(&config_path, e)),
    };

    let named = |key: &str| -> Option<NamedToken> {
        let content = token_content(config.get(key)?)?;
        let id = tokenizer.token_to_id(content)?;
        Some(NamedToken {
            content: content.to_string(),
            id,
        })
    };
    let mut special = SpecialTokens {
        bos: named("bos_token"),
        eos: named("eos_token"),
        unk: named("unk_token"),
        pad: named("pad_token"),
        ..SpecialTokens::default()
    };
    special.register_as_added_tokens(&mut tokenizer);

    let explicit_bos = config.get("add_bos_token").and_then(Value::as_bool);
    let explicit_eos = config.get("add_eos_token").and_then(Value::as_bool);
    if explicit_bos.is_some() || explicit_eos.is_some() {
        // transformers rebuilds the post-processor when the configuration sets either flag.
        special.add_bos = explicit_bos.unwrap_or(false);
        special.add_eos = explicit_eos.unwrap_or(false);
        special.normalize_flags();
        tokenizer.with_post_processor(Some(special.post_processor()?));
    } else {
        // Otherwise `tokenizer.json`'s own post-processor decides; report what it does.
        let probe = tokenizer
            .encode_fast("", true)
            .map_err(|e| Error::invalid_model(&tokenizer_path, e.to_string()))?;
        let ids = probe.get_ids();
        special.add_bos = special
            .bos
            .as_ref()
            .is_some_and(|t| ids.first() == Some(&t.id));
        special.add_eos = special
            .eos
            .as_ref()
            .is_some_and(|t| ids.last() == Some(&t.id));
    }

    let template_path = dir.join(CHAT_TEMPLATE_FILE);
    let chat_template = match std::fs::read_to_string(&template_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => config_chat_template(&config)
            .map_err(|reason| Error::invalid_model(&config_path, reason))?,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Error::invalid_model(&template_path, "not valid UTF-8"))
        }
        Err(e) => return Err(Error::io(&template_path, e)),
    };
    Ok(HfTokenizer {
        tokenizer,
        special,
        chat_template,
    })
}

/// A special token's text from `tokenizer_config.json`: a string, or an object with `content`
/// (a serialized `AddedToken`); `null` means none.
fn token_content(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(map) => map.get("content")?.as_str(),
        _ => None,
    }
}

/// The configuration's chat template: a string, or a list of `{name, template}` of which the one
/// named "default" is used (none if there is no default).
fn config_chat_template(config: &Value) -> std::result::Result<Option<String>, String> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(template)) => Ok(Some(template.clone())),
        Some(Value::Array(templates)) => {
            for entry in templates {
                let name = entry.get("name").and_then(Value::as_str);
                let template = entry.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some(DEFAULT_TEMPLATE_NAME), Some(template)) => {
                        return Ok(Some(template.to_string()))
                    }
                    (Some(_), Some(_)) => {}
                    _ => return Err("chat_template entries must have a name and a template".into()),
                }
            }
            Ok(None)
        }
        Some(_) => Err("chat_template must be a string or a list of {name, template}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn special_tokens_are_strings_or_added_token_objects() {
        assert_eq!(token_content(&json!("<s>")), Some("<s>"));
        assert_eq!(
            token_content(&json!({"content": "</s>", "special": true})),
            Some("</s>")
        );
        assert_eq!(token_content(&Value::Null), None);
    }

    #[test]
    fn chat_template_lists_use_the_default_entry() {
        let listed = json!({"chat_template": [
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]});
        assert_eq!(config_chat_template(&listed), Ok(Some("D".to_string())));
        let only_named = json!({"chat_template": [{"name": "rag", "template": "R"}]});
        assert_eq!(config_chat_template(&only_named), Ok(None));
        assert_eq!(
            config_chat_template(&json!({"chat_template": "S"})),
            Ok(Some("S".into()))
        );
        assert!(config_chat_template(&json!({"chat_template": 3})).is_err());
        assert!(config_chat_template(&json!({"chat_template": [{"name": "x"}]})).is_err());
    }
}
