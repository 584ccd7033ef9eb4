//! Per-request sampling parameters, with vLLM's names, defaults and validation.

use crate::error::{Error, Result};
use crate::structured::{CompiledGrammar, StructuredOutputs};

/// Most sequences one request may ask for (`n`).
pub const MAX_N: usize = 64;

/// Temperatures below this sample greedily (vLLM's `_SAMPLING_EPS`): dividing logits by a
/// smaller one overflows or leaves only the argmax anyway.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// Most log-probabilities a request may ask for per token.
pub const MAX_LOGPROBS: usize = 20;

/// How to pick each new token, and when to stop.
///
/// Defaults follow vLLM: `max_tokens = 16`, `temperature = 1.0`, everything else off.
/// [`SamplingParams::validate`] states the accepted ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Number of sequences to generate from the prompt (they share its KV blocks).
    pub n: usize,
    /// Most tokens to generate; `None` means until `max_model_len`.
    pub max_tokens: Option<usize>,
    /// 0 means greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens; -1 (or 0) keeps all.
    pub top_k: i32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's.
    pub min_p: f32,
    /// Seed of this request's random stream; the same seed gives the same tokens.
    pub seed: Option<u64>,
    /// Strings that end generation; the stop string is not included in the text unless
    /// `include_stop_str_in_output`.
    pub stop: Vec<String>,
    /// Keep the stop string that ended generation at the end of the text.
    pub include_stop_str_in_output: bool,
    /// Generate at least this many tokens: until then end-of-sequence and stop token ids
    /// cannot be picked and stop strings are not looked for (as in vLLM).
    pub min_tokens: usize,
    /// Leave special tokens (end-of-sequence, chat markers) out of the text.
    pub skip_special_tokens: bool,
    /// Token ids that end generation (included in `token_ids`, not in the text if special).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Multiplies down (divides positive, multiplies negative) logits of tokens already seen
    /// in the prompt or the output; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted from logits of tokens present in the output; 0 is off.
    pub presence_penalty: f32,
    /// Subtracted from logits once per occurrence in the output; 0 is off.
    pub frequency_penalty: f32,
    /// Number of top log-probabilities to return per generated token; `None` returns none.
    pub logprobs: Option<usize>,
    /// Number of top log-probabilities to return for each prompt token (from the second on);
    /// `None` returns none. Such requests compute their whole prompt (no prefix-cache hits).
    pub prompt_logprobs: Option<usize>,
    /// The shape the output must have (JSON Schema, regex, choice, grammar); `None`: free.
    pub structured_outputs: Option<StructuredOutputs>,
    /// `structured_outputs` compiled; set on submission
    /// ([`GrammarCompiler::prepare`](crate::structured::GrammarCompiler::prepare)).
    pub grammar: Option<CompiledGrammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            max_tokens: Some(16),
            temperature: 1.0,
            top_p: 1.0,
            top_k: -1,
            min_p: 0.0,
            seed: None,
            stop: Vec::new(),
            include_stop_str_in_output: false,
            min_tokens: 0,
            skip_special_tokens: true,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            prompt_logprobs: None,
            structured_outputs: None,
            grammar: None,
        }
    }
}

impl SamplingParams {
    /// Checks every value, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if self.n == 0 || self.n > MAX_N {
            return bad(format!("n must be in [1, {MAX_N}], got {}", self.n));
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens must be at least 1, got 0".into());
        }
        if let Some(max) = self.max_tokens.filter(|&m| self.min_tokens > m) {
            return bad(format!(
                "min_tokens must be at most max_tokens ({max}), got {}",
                self.min_tokens
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k < -1 {
            return bad(format!(
                "top_k must be -1 (disabled), 0 (disabled) or >= 1, got {}",
                self.top_k
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be a finite number > 0, got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"));
            }
        }
        for (name, v) in [
            ("logprobs", self.logprobs),
            ("prompt_logprobs", self.prompt_logprobs),
        ] {
            if let Some(k) = v.filter(|&k| k > MAX_LOGPROBS) {
                return bad(format!("{name} must be at most {MAX_LOGPROBS}, got {k}"));
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    /// Whether the next token is the argmax (no randomness involved).
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE || self.top_k == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_named() {
        assert!(SamplingParams::default().validate().is_ok());
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_k: -2,
                    ..Default::default()
                },
                "top_k",
            ),
            (
                SamplingParams {
                    min_p: 1.1,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    presence_penalty: 3.0,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -2.5,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    max_tokens: Some(0),
                    ..Default::default()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..Default::default()
                },
                "logprobs",
            ),
            (
                SamplingParams {
                    min_tokens: 17,
                    ..Default::default()
                },
                "min_tokens",
            ),
            (
                SamplingParams {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop",
            ),
        ];
        for (p, name) in cases {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err} should name {name}");
        }
    }
}
