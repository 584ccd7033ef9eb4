//! One step's launch and collection: plan, batch, forward and sampling on the backend, then
//! the scheduler's update and the deltas. `Engine::step` is the whole of it; the engine loop
//! calls its parts ([`Engine::collect_step`], [`Engine::launch_next`], [`Engine::emit`]) so
//! that it can take in requests between collecting a step and launching the next.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::batch::build_batch;
use super::trace::LaunchRecord;
use super::{Engine, Launched, Scheduled, SeqDelta, Sequence, StepOutput, UpdateContext};
use crate::backend::Backend;
use crate::error::Error;
use crate::sampling::{RowSampling, StepSampling};

impl<B: Backend> Engine<B> {
    /// Runs one step and returns what changed, one delta per sequence that produced tokens or
    /// finished. A sequence that fails (e.g. its detokenization) is finished alone with its
    /// error in the second list. The three parts, [`collect_step`](Self::collect_step),
    /// [`launch_next`](Self::launch_next) and [`emit`](Self::emit), are public so that the
    /// engine loop can take in new requests between collecting a step and launching the next.
    ///
    /// With async scheduling (see
    /// [`EngineConfig::async_scheduling`](super::EngineConfig::async_scheduling)) a step is
    /// launched before the previous one's tokens are turned into text and deltas, so that this
    /// host work overlaps the device's. At most one step is in flight; sequences aborted
    /// meanwhile keep their KV blocks until it has been collected.
    pub fn step(&mut self) -> (Vec<SeqDelta>, Vec<(u64, Error)>) {
        let (mut deltas, mut errors) = self.collect_step();
        self.launch_next();
        let (more, failed) = self.emit();
        deltas.extend(more);
        errors.extend(failed);
        (deltas, errors)
    }

    /// Finishes the step in flight, or runs one now, and applies its outcome
    /// ([`Scheduler::update`](super::Scheduler::update)). Sequences that finished leave,
    /// freeing their blocks; returns their last deltas and the sequences that failed.
    pub fn collect_step(&mut self) -> (Vec<SeqDelta>, Vec<(u64, Error)>) {
        let launched = match self.in_flight.take() {
            Some(launched) => launched,
            None => match self.launch_step() {
                Some(launched) => launched,
                None => return (Vec::new(), Vec::new()),
            },
        };
        let t_collect = Instant::now();
        let collected = self.runner.collect(&launched.step);
        let collect_time = t_collect.elapsed();
        let (logits, tokens) = match collected {
            Ok(out) => out,
            Err(e) => {
                let failed = self.fail_step(&launched.plan, e);
                // Sequences aborted while the step was in flight but not in its plan leave too
                // (their final deltas went out with the abort).
                self.scheduler.take_finished(&mut self.kv);
                return (Vec::new(), failed);
            }
        };
        let out = StepOutput {
            plan: &launched.plan,
            logits: &logits,
            tokens: tokens.as_deref(),
            vocab: self.runner.model_config().vocab_size,
        };
        let ctx = UpdateContext {
            tokenizer: &self.tokenizer,
            eos_token_ids: &self.eos_token_ids,
            defer_text: self.async_scheduling,
            jump_forward: self.config.structured_jump_forward,
        };
        let mut errors = self.scheduler.update(&mut self.kv, out, &ctx);
        let mut deltas = Vec::new();
        for mut seq in self.scheduler.take_finished(&mut self.kv) {
            match seq.emit_delta(&self.tokenizer) {
                Ok(delta) => deltas.extend(delta),
                Err(e) => errors.push(e),
            }
        }
        if let Some(record) = &launched.trace {
            let apply = t_collect.elapsed() - collect_time;
            let (timing, last) = (self.runner.backend().step_timing(), !self.has_work());
            if let Some(trace) = &mut self.trace {
                trace.write(record, t_collect, collect_time, apply, timing, last);
            }
        }
        (deltas, errors)
    }

    /// With async scheduling, plans and launches the next step (if there is work) without
    /// waiting for it; otherwise does nothing (the next [`collect_step`](Self::collect_step)
    /// runs it).
    pub fn launch_next(&mut self) {
        if self.async_scheduling && self.in_flight.is_none() {
            self.in_flight = self.launch_step();
        }
    }

    /// Text and deltas of every sequence with news since the last call: in parallel over the
    /// engine's threads in chunks of 64 sequences (waking workers for fewer costs more CPU
    /// than it saves). With async scheduling this runs while the device computes the step
    /// [`launch_next`](Self::launch_next) started.
    pub fn emit(&mut self) -> (Vec<SeqDelta>, Vec<(u64, Error)>) {
        let tokenizer = &self.tokenizer;
        let emit = |seq: &mut Sequence| seq.emit_delta(tokenizer);
        let running: Vec<_> = self
            .scheduler
            .running
            .par_iter_mut()
            .with_min_len(64)
            .map(emit)
            .collect();
        let waiting: Vec<_> = self.scheduler.waiting.iter_mut().map(emit).collect();
        let (mut deltas, mut errors) = (Vec::new(), Vec::new());
        for outcome in running.into_iter().chain(waiting) {
            match outcome {
                Ok(delta) => deltas.extend(delta),
                Err(e) => errors.push(e),
            }
        }
        (deltas, errors)
    }

    /// Plans the next step and launches it on the backend without waiting; `None` when there
    /// is nothing to run.
    fn launch_step(&mut self) -> Option<Launched> {
        let t_launch = Instant::now();
        let plan = self.scheduler.schedule(&mut self.kv);
        if plan.is_empty() {
            return None;
        }
        let mut batch = build_batch(&self.scheduler.running, &plan, self.kv.block_size());
        // Tokens are picked on the backend, so that only their ids leave it, unless a sequence
        // of the step needs its logits on the host (log-probabilities, banned tokens). The
        // rows (and grammars' masks) are made while the device runs the forward pass.
        let on_backend = plan
            .iter()
            .all(|s| !self.scheduler.running[s.seq].needs_host_logits());
        let width = self.runner.model_config().vocab_size;
        let running = &mut self.scheduler.running;
        let sampling = || {
            on_backend
                .then(|| backend_sampling(running, &plan, width))
                .flatten()
        };
        // The runner pads a decode step to its graph's size (and its sampling with greedy rows).
        let step = self.runner.launch(&mut batch, sampling);
        let trace = self
            .trace
            .is_some()
            .then(|| LaunchRecord::new(&batch, plan.len(), t_launch));
        Some(Launched { plan, step, trace })
    }

    /// A forward step failed on the backend: its requests end with the error (their blocks are
    /// freed); requests that were not in the step go on.
    fn fail_step(&mut self, plan: &[Scheduled], e: Error) -> Vec<(u64, Error)> {
        let mut ids: Vec<u64> = plan
            .iter()
            .map(|s| self.scheduler.running[s.seq].request_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                self.abort(id);
                (id, Error::Engine(format!("forward step failed: {e}")))
            })
            .collect()
    }
}

impl<B: Backend> Drop for Engine<B> {
    /// Waits for a step still in flight: the device must be done with the buffers before they
    /// are freed.
    fn drop(&mut self) {
        if let Some(l) = self.in_flight.take() {
            let _ = self.runner.collect(&l.step);
        }
    }
}

/// How the backend picks a step's tokens: one row per sequence of `plan` that reaches the end
/// of its tokens, from its sampler, with its grammar's mask over `width` logits. A mask
/// follows the token before it, which the engine has always applied by now: a step is
/// launched only once the one before it is collected (async scheduling overlaps the text, not
/// the tokens). The masks are computed here, in parallel over the sequences, while the device
/// runs the step's forward pass. `None` where a mask cannot be computed: the host then picks
/// from the logits, and the failure ends that sequence there.
fn backend_sampling(
    running: &mut [Sequence],
    plan: &[Scheduled],
    width: usize,
) -> Option<StepSampling> {
    let mut ends = vec![false; running.len()];
    for s in plan {
        let seq = &running[s.seq];
        ends[s.seq] = seq.num_computed + s.num_tokens == seq.num_tokens();
    }
    // Every mask before any row, so that no random stream advances for a step that falls back
    // to the host. One sequence a task: a mask can take a millisecond.
    let constrained = |i: usize, seq: &Sequence| ends[i] && seq.grammar.is_some();
    let mut masks: Vec<Option<Arc<[u32]>>> = vec![None; running.len()];
    if running
        .iter()
        .enumerate()
        .any(|(i, seq)| constrained(i, seq))
    {
        let computed: Vec<(usize, Arc<[u32]>)> = (running.par_iter_mut().enumerate())
            .filter(|(i, seq)| constrained(*i, seq))
            .map(|(i, seq)| Ok((i, seq.grammar_mask(width)?.expect("a grammar"))))
            .collect::<crate::error::Result<_>>()
            .ok()?;
        for (i, mask) in computed {
            masks[i] = Some(mask);
        }
    }
    let mut step = StepSampling::default();
    for s in plan.iter().filter(|s| ends[s.seq]) {
        let seq = &mut running[s.seq];
        let row = seq.sampler.row(&seq.params, &mut step.penalty_tokens);
        step.rows.push(RowSampling {
            mask: masks[s.seq].take(),
            ..row
        });
    }
    Some(step)
}
