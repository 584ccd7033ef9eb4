//! One request's sequence: its tokens, KV blocks, sampler, detokenizer and stop state.

use crate::error::Result;
use crate::sampling::{Sampler, SamplingParams, StopChecker};
use crate::tokenizer::{IncrementalDetokenizer, Tokenizer};

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or `max_model_len` reached.
    Length,
    /// Aborted by the caller.
    Abort,
}

impl FinishReason {
    /// The OpenAI / vLLM spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// The state of one request inside the engine.
///
/// Invariant: `num_computed <= prompt.len() + output.len()`, and `block_table` covers at least
/// `num_computed` tokens.
pub struct Sequence {
    pub request_id: u64,
    pub prompt: Vec<u32>,
    pub output: Vec<u32>,
    pub params: SamplingParams,
    /// Most tokens this sequence may generate (`max_tokens`, capped by `max_model_len`).
    pub max_new_tokens: usize,
    pub sampler: Sampler,
    pub block_table: Vec<u32>,
    /// Tokens whose keys and values are in the cache.
    pub num_computed: usize,
    detokenizer: IncrementalDetokenizer,
    stop: StopChecker,
    /// Text of `output` (cut at a stop string once one is found).
    pub text: String,
    /// Per generated token, the requested log-probabilities.
    pub logprobs: Vec<Vec<(u32, f32)>>,
    pub finish_reason: Option<FinishReason>,
}

impl Sequence {
    pub fn new(
        request_id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        max_new_tokens: usize,
        seed: u64,
    ) -> Self {
        Sequence {
            request_id,
            sampler: Sampler::new(&params, &prompt, seed),
            detokenizer: IncrementalDetokenizer::new(&prompt, true),
            stop: StopChecker::new(&params.stop),
            prompt,
            output: Vec::new(),
            max_new_tokens,
            block_table: Vec::new(),
            num_computed: 0,
            text: String::new(),
            logprobs: Vec::new(),
            finish_reason: None,
            params,
        }
    }

    /// Prompt and output tokens so far.
    pub fn num_tokens(&self) -> usize {
        self.prompt.len() + self.output.len()
    }

    /// Token at position `i` of prompt + output.
    pub fn token(&self, i: usize) -> u32 {
        if i < self.prompt.len() {
            self.prompt[i]
        } else {
            self.output[i - self.prompt.len()]
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    /// Appends a sampled token and updates text and finish state.
    pub fn append(
        &mut self,
        token: u32,
        logprobs: Option<Vec<(u32, f32)>>,
        tokenizer: &Tokenizer,
        eos_token_ids: &[u32],
    ) -> Result<()> {
        self.output.push(token);
        self.sampler.observe(&self.params, token);
        if let Some(lp) = logprobs {
            self.logprobs.push(lp);
        }
        let checked = self.text.len();
        self.text
            .push_str(&self.detokenizer.push(tokenizer, token)?);
        let mut finish = if (!self.params.ignore_eos && eos_token_ids.contains(&token))
            || self.params.stop_token_ids.contains(&token)
        {
            Some(FinishReason::Stop)
        } else if self.output.len() >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if finish.is_some() {
            self.text.push_str(&self.detokenizer.finish(tokenizer)?);
        }
        if let Some(cut) = self.stop.find(&self.text, checked) {
            self.text.truncate(cut);
            finish = Some(FinishReason::Stop);
        }
        self.finish_reason = finish;
        Ok(())
    }

    /// The text that may be shown now: all of it once finished, else everything up to where a
    /// stop string could still begin.
    pub fn visible_text(&self) -> &str {
        if self.is_finished() {
            &self.text
        } else {
            &self.text[..self.stop.safe_len(&self.text)]
        }
    }
}

/// What a caller sees of a request: a copy, so it can cross threads and outlive the engine's
/// borrow. Cumulative: `text` and `token_ids` hold everything generated so far.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub request_id: u64,
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    /// `None` unless the request asked for log-probabilities.
    pub logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub finish_reason: Option<FinishReason>,
}

impl RequestOutput {
    pub fn finished(&self) -> bool {
        self.finish_reason.is_some()
    }
}

impl Sequence {
    /// The caller's view of this sequence now.
    pub fn to_output(&self) -> RequestOutput {
        RequestOutput {
            request_id: self.request_id,
            prompt_token_ids: self.prompt.clone(),
            token_ids: self.output.clone(),
            text: self.visible_text().to_string(),
            logprobs: self.params.logprobs.map(|_| self.logprobs.clone()),
            finish_reason: self.finish_reason,
        }
    }
}
