//! The caller's side of the engine loop: [`EngineHandle`] submits, aborts and reads the
//! published stats; [`Submitted`] receives one request's [`RequestEvent`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::guard::dead_engine;
use super::serve_loop::run;
use super::{Command, FailedMemory, Shared};
use crate::backend::{Backend, SleepReport};
use crate::engine::{Engine, EngineStats, RequestLimits, RequestOutput, SeqDelta};
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::structured::GrammarCompiler;

/// What a request's receiver gets.
#[derive(Debug)]
pub enum RequestEvent {
    /// New output of one of the request's sequences.
    Delta(SeqDelta),
    /// The request failed inside the engine; no more events follow.
    Failed(Error),
}

/// A handle on a running engine loop. Dropping the last handle stops the loop.
pub struct EngineHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    limits: RequestLimits,
    /// Structured outputs are compiled here, on the caller's thread, not the engine's.
    grammars: Arc<GrammarCompiler>,
    next_request_id: Arc<AtomicU64>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Whether the backend can sleep with the loop alive.
    can_sleep: bool,
}

impl Clone for EngineHandle {
    fn clone(&self) -> Self {
        EngineHandle {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
            limits: self.limits,
            grammars: self.grammars.clone(),
            next_request_id: self.next_request_id.clone(),
            thread: self.thread.clone(),
            can_sleep: self.can_sleep,
        }
    }
}

/// A submitted request: its id, the receiver of its outputs and what arrived so far.
pub struct Submitted {
    pub request_id: u64,
    events: UnboundedReceiver<RequestEvent>,
    /// Everything received so far.
    pub output: RequestOutput,
}

impl Submitted {
    /// Waits (blocking the thread) for the next event and folds it into `output`. Returns
    /// `Ok(false)` once the request has finished (no more events will come). Not for use
    /// inside an async runtime: use [`Submitted::next_event`] there.
    pub fn advance(&mut self) -> Result<bool> {
        if self.output.finished() {
            return Ok(false);
        }
        let event = self.events.blocking_recv();
        self.fold(event)
    }

    /// The async form of [`Submitted::advance`], returning the delta it folded in.
    pub async fn next_event(&mut self) -> Result<Option<SeqDelta>> {
        if self.output.finished() {
            return Ok(None);
        }
        match self.events.recv().await {
            Some(RequestEvent::Delta(d)) => {
                self.output.apply(d.clone());
                Ok(Some(d))
            }
            Some(RequestEvent::Failed(e)) => Err(e),
            None => Err(Error::Engine("the engine loop has stopped".into())),
        }
    }

    fn fold(&mut self, event: Option<RequestEvent>) -> Result<bool> {
        match event {
            Some(RequestEvent::Delta(d)) => {
                self.output.apply(d);
                Ok(true)
            }
            Some(RequestEvent::Failed(e)) => Err(e),
            None => Err(Error::Engine("the engine loop has stopped".into())),
        }
    }

    /// Waits until the request has finished and returns its output.
    pub fn wait(mut self) -> Result<RequestOutput> {
        while self.advance()? {}
        Ok(self.output)
    }
}

impl EngineHandle {
    /// Moves `engine` onto its own rayon pool (`num_threads` workers, as the engine settled it;
    /// unset: rayon's default) and returns a handle on it. The loop runs on one of the pool's workers, so the
    /// forward pass's parallel loops start without a cross-thread hand-off; a pool per engine
    /// keeps engines in one process from blocking each other.
    pub fn spawn<B: Backend + 'static>(engine: Engine<B>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        *shared
            .stats
            .lock()
            .map_err(|_| Error::Engine("stats poisoned".into()))? = engine.stats();
        let limits = engine.limits();
        let can_sleep = engine.runner.backend().can_sleep();
        let grammars = engine.grammars().clone();
        let loop_shared = shared.clone();
        let fail_after = crate::tuning::Tuning::from_env().fail_after_steps;
        let mut pool = rayon::ThreadPoolBuilder::new();
        if let Some(threads) = engine.config().num_threads {
            pool = pool.num_threads(threads);
        }
        let pool = pool
            .thread_name(|i| format!("infire-worker-{i}"))
            .build()
            .map_err(|e| Error::Engine(format!("cannot start the engine's threads: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("infire-engine".into())
            .spawn(move || pool.install(|| run(engine, rx, &loop_shared, fail_after)))
            .map_err(|e| Error::Engine(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            commands: tx,
            shared,
            limits,
            grammars,
            next_request_id: Arc::new(AtomicU64::new(0)),
            thread: Arc::new(Mutex::new(Some(thread))),
            can_sleep,
        })
    }

    /// What requests may ask for.
    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// The compiler of structured outputs (callers may compile before submitting).
    pub fn grammars(&self) -> &Arc<GrammarCompiler> {
        &self.grammars
    }

    /// Validates and submits a request. A bad request fails here, alone, with nothing changed.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<Submitted> {
        self.submit_bounded(prompt, params, priority, usize::MAX)?
            .map_err(|_| Error::Engine("unbounded submission refused".into()))
    }

    /// [`submit`](Self::submit), unless the request's sequences would make more than
    /// `max_waiting` wait: then nothing is submitted and `Ok(Err(waiting))` says how many wait
    /// now. Counted where submissions happen, so a burst of simultaneous requests cannot
    /// overshoot the limit.
    pub fn submit_bounded(
        &self,
        prompt: Vec<u32>,
        mut params: SamplingParams,
        priority: i32,
        max_waiting: usize,
    ) -> Result<std::result::Result<Submitted, usize>> {
        self.limits.check(&prompt, &params)?;
        self.grammars.prepare(&mut params)?;
        if let Some(failure) = self.failure() {
            return Err(dead_engine(&failure));
        }
        let n = params.n;
        let queued = &self.shared.queued;
        let reserved = queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
            let waiting = self.stats().num_waiting.saturating_add(q);
            (waiting.saturating_add(n) <= max_waiting).then_some(q + n)
        });
        if let Err(q) = reserved {
            return Ok(Err(self.stats().num_waiting.saturating_add(q)));
        }
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = unbounded_channel();
        let output = RequestOutput::new(
            request_id,
            prompt.clone(),
            params.n,
            params.logprobs.is_some(),
        );
        let sent = self.commands.send(Command::Add {
            request_id,
            prompt,
            params: Box::new(params),
            priority,
            events,
        });
        if sent.is_err() {
            queued.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::Engine("the engine loop has stopped".into()));
        }
        Ok(Ok(Submitted {
            request_id,
            events: rx,
            output,
        }))
    }

    /// Aborts a request; its receiver gets final deltas with finish reason `abort`. Unknown or
    /// finished requests are ignored.
    pub fn abort(&self, request_id: u64) {
        let _ = self.commands.send(Command::Abort(request_id));
    }

    /// Load and KV usage as of the end of the last step.
    pub fn stats(&self) -> EngineStats {
        self.shared.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// `Some(message)` once the engine loop has died of a panic; it then serves nothing.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    /// `None` while the engine serves; after its loop died, what became of its memory
    /// (freed on the loop's thread right after its requests got their error).
    pub fn failed_memory(&self) -> Option<FailedMemory> {
        self.failure()?;
        Some(FailedMemory::from_u8(
            self.shared.release.load(Ordering::SeqCst),
        ))
    }

    /// Waits, at most `timeout`, while a failed engine's memory is being freed; returns
    /// [`failed_memory`](Self::failed_memory) then.
    pub fn wait_released(&self, timeout: std::time::Duration) -> Option<FailedMemory> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let m = self.failed_memory();
            if m != Some(FailedMemory::Releasing) || std::time::Instant::now() >= deadline {
                return m;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Puts the backend's memory to sleep with the loop alive (see the module docs): requests
    /// running end with `reason`, later ones wait for [`wake`](Self::wake). `Unsupported`,
    /// with nothing changed, where the backend cannot sleep (the CPU).
    pub fn sleep(&self, reason: &str) -> Result<SleepReport> {
        let (reply, answer) = mpsc::channel();
        let reason = reason.to_string();
        self.ask(Command::Sleep { reason, reply }, answer)
    }

    /// Brings the memory back after [`sleep`](Self::sleep); requests that waited then run.
    pub fn wake(&self) -> Result<SleepReport> {
        let (reply, answer) = mpsc::channel();
        self.ask(Command::Wake { reply }, answer)
    }

    /// Whether [`sleep`](Self::sleep) keeps this engine (its backend can sleep).
    pub fn can_sleep(&self) -> bool {
        self.can_sleep
    }

    /// Whether `other` is a handle on the same engine loop.
    pub fn same_engine(&self, other: &EngineHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether the backend's memory is asleep.
    pub fn is_asleep(&self) -> bool {
        self.shared.asleep.load(Ordering::SeqCst)
    }

    /// Sends `cmd` and waits for its answer.
    fn ask<T>(&self, cmd: Command, answer: mpsc::Receiver<Result<T>>) -> Result<T> {
        let stopped = || Error::Engine("the engine loop has stopped".into());
        self.commands.send(cmd).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Stops the loop after the step in flight and waits for the thread. Requests still running
    /// get `Failed`.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        self.join();
    }

    /// [`shutdown`](Self::shutdown), telling the requests still running `reason` (a node puts
    /// a model to sleep or unloads it).
    pub fn shutdown_with(&self, reason: &str) {
        if let Ok(mut r) = self.shared.stop_reason.lock() {
            *r = Some(reason.to_string());
        }
        self.shutdown();
    }

    /// Waits for the loop's thread to end (it has been told to).
    fn join(&self) {
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}
