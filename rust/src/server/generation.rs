//! One request running in the engine on behalf of an HTTP client: submission with
//! back-pressure, latency metrics, and abort when the client goes away (dropping a
//! [`Generation`] before it finished aborts its request at once, freeing its KV blocks).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::access_log::RequestLog;
use super::errors::ApiError;
use super::otel::RequestSpan;
use super::traffic::QueuePlace;
use super::AppState;
use crate::engine::engine_loop::{EngineHandle, Submitted};
use crate::engine::{RequestOutput, SeqDelta};
use crate::sampling::SamplingParams;

/// A request in flight.
pub struct Generation {
    handle: EngineHandle,
    submitted: Submitted,
    state: Arc<AppState>,
    /// When the HTTP request arrived.
    arrival: Instant,
    /// When the last token reached us (for inter-token latency).
    last_token: Option<Instant>,
    finished: bool,
    /// The request's access-log line, counting its tokens.
    log: RequestLog,
    /// Its place in its class's queue until its first token.
    place: QueuePlace,
    /// The request's trace span, given the engine's times when it finishes.
    span: RequestSpan,
}

impl Generation {
    /// Submits `prompt` with the request's priority; answers 429 when its class already has
    /// its limit of requests waiting for a first token, or when its sequences would make more
    /// than `max_waiting` wait (counted at submission, exact under any burst), 503 once the server is shutting
    /// down (a keep-alive connection may still bring requests).
    pub fn start(
        state: &Arc<AppState>,
        prompt: Vec<u32>,
        params: SamplingParams,
        arrival: Instant,
        log: &RequestLog,
        span: &RequestSpan,
    ) -> Result<Self, ApiError> {
        if state.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::shutting_down());
        }
        let max_waiting = state.config.max_waiting;
        let prompt_len = prompt.len();
        let class = state.class;
        let place = state
            .slot
            .queues
            .enter(class, state.config.max_waiting_class[class.index()])
            .inspect_err(|_| state.metrics.class(class).count_rejected())?;
        span.set_request(&params, &state.config.served_model_name);
        let submitted = state
            .handle
            .submit_bounded(prompt, params, state.priority, max_waiting)?
            .map_err(|waiting| {
                state.metrics.class(class).count_rejected();
                ApiError::overloaded(waiting, max_waiting)
            })?;
        log.add_prompt(prompt_len);
        Ok(Generation {
            handle: state.handle.clone(),
            submitted,
            state: state.clone(),
            arrival,
            last_token: None,
            finished: false,
            log: log.clone(),
            place,
            span: span.clone(),
        })
    }

    /// The next delta of any of the request's sequences; `None` once all have finished.
    pub async fn next(&mut self) -> Result<Option<SeqDelta>, ApiError> {
        let delta = match self.submitted.next_event().await {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.finished = true;
                return Err(e.into());
            }
        };
        let metrics = &self.state.metrics;
        let class = metrics.class(self.state.class);
        if !delta.token_ids.is_empty() {
            let now = Instant::now();
            self.log
                .add_output(delta.token_ids.len(), now - self.arrival);
            match self.last_token {
                None => {
                    self.place.leave();
                    metrics.ttft.observe(now - self.arrival);
                    class.ttft.observe(now - self.arrival);
                    // The engine's clock: from the request's arrival there to its admission.
                    if let Some(s) = delta.scheduled_time {
                        let queued = (s - delta.arrival_time).max(0.0);
                        class
                            .queue
                            .observe(std::time::Duration::from_secs_f64(queued));
                    }
                }
                Some(t) => metrics.inter_token.observe(now - t),
            }
            class
                .generation_tokens
                .fetch_add(delta.token_ids.len() as u64, Ordering::Relaxed);
            self.last_token = Some(now);
            metrics
                .generation_tokens
                .fetch_add(delta.token_ids.len() as u64, Ordering::Relaxed);
        }
        if self.submitted.output.finished() {
            self.finished = true;
            metrics.e2e.observe(self.arrival.elapsed());
            let prompt = self.submitted.output.prompt_token_ids.len() as u64;
            metrics.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
            class.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
            self.span.record_engine(&self.submitted.output);
        }
        Ok(Some(delta))
    }

    /// Runs the request to its end and returns its output.
    pub async fn finish(mut self) -> Result<RequestOutput, ApiError> {
        while self.next().await?.is_some() {}
        Ok(self.submitted.output.clone())
    }

    /// What arrived so far.
    pub fn output(&self) -> &RequestOutput {
        &self.submitted.output
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.finished {
            self.handle.abort(self.submitted.request_id);
        }
    }
}
