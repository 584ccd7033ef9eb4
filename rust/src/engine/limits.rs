//! What a request may ask for, checked before it reaches the engine.

use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// What a request may ask for; checked before it reaches the engine, so a bad request fails
/// alone and changes nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// Tokens the whole KV cache holds.
    pub kv_capacity_tokens: usize,
}

impl RequestLimits {
    /// Validates a request; returns the most tokens each of its sequences may generate.
    pub fn check(&self, prompt: &[u32], params: &SamplingParams) -> Result<usize> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidRequest(
                "prompt must contain at least one token".into(),
            ));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(Error::InvalidRequest(format!(
                "prompt token id {bad} is outside the vocabulary (size {})",
                self.vocab_size
            )));
        }
        if prompt.len() >= self.max_model_len {
            return Err(Error::InvalidRequest(format!(
                "prompt has {} tokens, but max_model_len is {}: at most {} prompt tokens fit",
                prompt.len(),
                self.max_model_len,
                self.max_model_len - 1
            )));
        }
        let room = self.max_model_len - prompt.len();
        // As vLLM: a request that cannot get what it asked for fails, rather than running until
        // the context is full and ending with a length it did not ask for.
        if let Some(m) = params.max_tokens.filter(|&m| m > room) {
            return Err(Error::InvalidRequest(format!(
                "max_tokens {m} is more than the context leaves: the prompt has {} tokens and \
                 max_model_len is {}, so at most {room} new tokens fit",
                prompt.len(),
                self.max_model_len
            )));
        }
        let max_new = params.max_tokens.unwrap_or(room);
        if prompt.len() + max_new > self.kv_capacity_tokens {
            return Err(Error::InvalidRequest(format!(
                "request needs {} tokens of KV cache (prompt {} + max_tokens {}), but the cache \
                 holds {}; lower max_tokens or raise kv_cache_tokens",
                prompt.len() + max_new,
                prompt.len(),
                max_new,
                self.kv_capacity_tokens
            )));
        }
        Ok(max_new)
    }
}
