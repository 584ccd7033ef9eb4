//! `infire._core.Tokenizer`: the model's tokenizer and chat template (the Python layer's
//! `infire.Tokenizer` gives it Hugging Face's call shapes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;

use super::convert::{invalid, to_pyerr, token_ids};
use crate::loader::open_tokenizer;
use crate::tokenizer::{ChatMessage, Tokenizer};

/// A tokenizer with its chat template.
#[pyclass(name = "Tokenizer", module = "infire._core", frozen)]
pub struct PyTokenizer {
    pub inner: Arc<Tokenizer>,
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

    /// `chat_template_kwargs`: a JSON object of more template variables.
    #[pyo3(signature = (messages, add_generation_prompt=true, chat_template_kwargs=None))]
    fn apply_chat_template(
        &self,
        messages: Vec<HashMap<String, String>>,
        add_generation_prompt: bool,
        chat_template_kwargs: Option<&str>,
    ) -> PyResult<String> {
        render_chat(
            &self.inner,
            messages,
            add_generation_prompt,
            chat_template_kwargs,
        )
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_token_ids()
    }

    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_token_id()
    }

    /// The token's id, or `None` if the vocabulary lacks it.
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token spelled by `id`, or `None` outside the vocabulary.
    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The chat template's Jinja source, or `None`.
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.inner.chat_template().map(|t| t.source().to_string())
    }
}

/// Renders `messages` (dicts of `role` and `content`) with `kwargs` (a JSON object) as extra
/// template variables.
pub fn render_chat(
    tok: &Tokenizer,
    messages: Vec<HashMap<String, String>>,
    add_generation_prompt: bool,
    kwargs: Option<&str>,
) -> PyResult<String> {
    let mut chat = Vec::with_capacity(messages.len());
    for mut m in messages {
        let (Some(role), Some(content)) = (m.remove("role"), m.remove("content")) else {
            return Err(invalid("each message needs a \"role\" and a \"content\""));
        };
        chat.push(ChatMessage { role, content });
    }
    let extra = match kwargs {
        None => serde_json::Map::new(),
        Some(json) => match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(invalid(
                    "chat_template_kwargs must be a dict of JSON values",
                ))
            }
        },
    };
    tok.apply_chat_template_with(&chat, add_generation_prompt, &extra)
        .map_err(to_pyerr)
}

/// Loads only the tokenizer of a model (a `.gguf` file or an HF directory).
#[pyfunction]
pub fn load_tokenizer(py: Python<'_>, path: PathBuf) -> PyResult<PyTokenizer> {
    let tok = py.detach(|| open_tokenizer(&path)).map_err(to_pyerr)?;
    Ok(PyTokenizer {
        inner: Arc::new(tok),
    })
}
