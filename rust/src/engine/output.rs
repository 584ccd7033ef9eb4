//! Request outputs as callers see them (vLLM's `RequestOutput`), built up from the
//! [`SeqDelta`]s the engine loop sends.

use crate::sampling::StopReason;

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

/// New output of one sequence since the last report. `finish_reason` is set on the last one.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqDelta {
    pub request_id: u64,
    pub index: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    /// `Some` (possibly empty) when the request asked for log-probabilities.
    pub logprobs: Option<Vec<Vec<(u32, f32)>>>,
    /// In the first delta of a request that asked for them: the prompt's log-probabilities.
    pub prompt_logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub finish_reason: Option<FinishReason>,
    /// With the finish reason: the stop token id or stop string that ended the sequence.
    pub stop_reason: Option<StopReason>,
    pub num_cached_tokens: usize,
    pub arrival_time: f64,
    /// When the sequence was first admitted (queue time: from `arrival_time` to this).
    pub scheduled_time: Option<f64>,
    pub first_token_time: Option<f64>,
    pub finished_time: Option<f64>,
}

/// One sequence of a request. Cumulative: `text` and `token_ids` hold everything so far.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompletionOutput {
    pub index: usize,
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Per generated token, `(token, logprob)` pairs; `None` unless asked for.
    pub logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub finish_reason: Option<FinishReason>,
    /// The stop token id or stop string that ended the sequence, if one did.
    pub stop_reason: Option<StopReason>,
}

/// Times of a request, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RequestMetrics {
    pub arrival_time: f64,
    /// When the first of its sequences was admitted (queue time: from `arrival_time` to this).
    pub scheduled_time: Option<f64>,
    pub first_token_time: Option<f64>,
    pub finished_time: Option<f64>,
}

/// The progress or result of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub request_id: u64,
    pub prompt_token_ids: Vec<u32>,
    /// One per sequence (`n`), by index.
    pub outputs: Vec<CompletionOutput>,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    /// For prompt tokens from the second on, `(token, logprob)` pairs; `None` unless asked for.
    pub prompt_logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub metrics: RequestMetrics,
}

impl RequestOutput {
    /// An empty output for a request of `n` sequences.
    pub fn new(request_id: u64, prompt_token_ids: Vec<u32>, n: usize, logprobs: bool) -> Self {
        RequestOutput {
            request_id,
            prompt_token_ids,
            outputs: (0..n)
                .map(|index| CompletionOutput {
                    index,
                    logprobs: logprobs.then(Vec::new),
                    ..Default::default()
                })
                .collect(),
            num_cached_tokens: 0,
            prompt_logprobs: None,
            metrics: RequestMetrics::default(),
        }
    }

    /// Whether every sequence has finished.
    pub fn finished(&self) -> bool {
        self.outputs.iter().all(|o| o.finish_reason.is_some())
    }

    /// Folds one delta in.
    pub fn apply(&mut self, d: SeqDelta) {
        let Some(o) = self.outputs.get_mut(d.index) else {
            return;
        };
        o.text.push_str(&d.text);
        o.token_ids.extend_from_slice(&d.token_ids);
        if let (Some(all), Some(new)) = (o.logprobs.as_mut(), d.logprobs) {
            all.extend(new);
        }
        o.finish_reason = d.finish_reason;
        o.stop_reason = d.stop_reason;
        if d.index == 0 {
            self.num_cached_tokens = d.num_cached_tokens;
            if d.prompt_logprobs.is_some() {
                self.prompt_logprobs = d.prompt_logprobs;
            }
        }
        let m = &mut self.metrics;
        m.arrival_time = if m.arrival_time == 0.0 {
            d.arrival_time
        } else {
            m.arrival_time.min(d.arrival_time)
        };
        let earliest = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        m.scheduled_time = earliest(m.scheduled_time, d.scheduled_time);
        m.first_token_time = earliest(m.first_token_time, d.first_token_time);
        if self.outputs.iter().all(|o| o.finish_reason.is_some()) {
            m.finished_time = d.finished_time.or(m.finished_time);
        }
    }
}
