//! The engine loop: one Rust thread owns the [`Engine`] and steps it while there is work;
//! callers talk to it through an [`EngineHandle`] (cheap to clone, usable from any thread).
//!
//! Commands go in over one channel; each request's outputs come back over its own channel as
//! [`RequestEvent`]s. A caller that drops its receiver has its request aborted at the next
//! step, freeing its blocks.
//!
//! A panic inside the loop (a bug, never a bad request) is caught: every request in flight
//! gets `Failed`, the failure is published ([`EngineHandle::failure`], which the server's
//! `/health` reports as 503), and the thread stays to answer every later request with an error
//! at once. The engine is not restarted: its state (blocks, device buffers) is not known to be
//! consistent after a panic, and restarting is the job of whatever supervises the process.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{Engine, EngineStats, RequestLimits, RequestOutput, SeqDelta};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;

/// What a request's receiver gets.
#[derive(Debug)]
pub enum RequestEvent {
    /// New output of one of the request's sequences.
    Delta(SeqDelta),
    /// The request failed inside the engine; no more events follow.
    Failed(Error),
}

enum Command {
    Add {
        request_id: u64,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
        events: UnboundedSender<RequestEvent>,
    },
    Abort(u64),
    Shutdown,
}

/// Most commands the loop handles between two steps: a flood of requests or aborts cannot
/// keep running sequences from advancing.
const MAX_COMMANDS_PER_STEP: usize = 1024;

/// State the loop publishes for readers on other threads.
#[derive(Default)]
struct Shared {
    stats: Mutex<EngineStats>,
    /// Sequences submitted whose request the loop has not taken in yet. With the published
    /// `num_waiting` (which the loop updates before it lowers this count) it bounds what waits,
    /// exactly, under any burst of submissions ([`EngineHandle::submit_bounded`]).
    queued: AtomicUsize,
    /// Set once, when the loop panicked: what the panic said.
    failure: Mutex<Option<String>>,
}

/// A handle on a running engine loop. Dropping the last handle stops the loop.
pub struct EngineHandle {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    limits: RequestLimits,
    next_request_id: Arc<AtomicU64>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Clone for EngineHandle {
    fn clone(&self) -> Self {
        EngineHandle {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
            limits: self.limits,
            next_request_id: self.next_request_id.clone(),
            thread: self.thread.clone(),
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
    /// Moves `engine` onto its own rayon pool (one worker per core, `RAYON_NUM_THREADS`
    /// overrides) and returns a handle on it. The loop runs on one of the pool's workers, so the
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
        let loop_shared = shared.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("infire-worker-{i}"))
            .build()
            .map_err(|e| Error::Engine(format!("cannot start the engine's threads: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("infire-engine".into())
            .spawn(move || pool.install(|| run(engine, rx, &loop_shared)))
            .map_err(|e| Error::Engine(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            commands: tx,
            shared,
            limits,
            next_request_id: Arc::new(AtomicU64::new(0)),
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// What requests may ask for.
    pub fn limits(&self) -> RequestLimits {
        self.limits
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
        params: SamplingParams,
        priority: i32,
        max_waiting: usize,
    ) -> Result<std::result::Result<Submitted, usize>> {
        self.limits.check(&prompt, &params)?;
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
            params,
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

    /// Stops the loop after the step in flight and waits for the thread. Requests still running
    /// get `Failed`.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

/// Per-request bookkeeping of the loop.
struct Route {
    events: UnboundedSender<RequestEvent>,
    /// Sequences not finished yet.
    open: usize,
}

/// The loop thread's body: [`serve`] until shutdown, under [`guarded`].
fn run<B: Backend>(mut engine: Engine<B>, commands: Receiver<Command>, shared: &Shared) {
    let panicked = guarded(&commands, shared, |routes| {
        serve(&mut engine, routes, shared, &commands)
    });
    if panicked {
        // Its destructor may meet the same inconsistency that made it panic: leak it instead.
        std::mem::forget(engine);
    }
}

/// Runs `body` (which routes requests through the map it is given) and catches its panic: then
/// fails every request in flight, publishes the failure, and answers every later request with
/// the error until shutdown (see the module docs). Returns whether `body` panicked.
fn guarded(
    commands: &Receiver<Command>,
    shared: &Shared,
    body: impl FnOnce(&mut HashMap<u64, Route>),
) -> bool {
    let mut routes: HashMap<u64, Route> = HashMap::new();
    let served = catch_unwind(AssertUnwindSafe(|| body(&mut routes)));
    let Err(panic) = served else { return false };
    let message = panic_message(panic.as_ref());
    eprintln!("infire: the engine loop panicked ({message}); it serves no more requests");
    if let Ok(mut f) = shared.failure.lock() {
        *f = Some(message.clone());
    }
    for (_, r) in routes.drain() {
        let _ = r.events.send(RequestEvent::Failed(dead_engine(&message)));
    }
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Add { events, .. } => {
                let _ = events.send(RequestEvent::Failed(dead_engine(&message)));
            }
            Command::Abort(_) => {}
            Command::Shutdown => break,
        }
    }
    true
}

/// The error requests get from an engine whose loop panicked with `message`.
fn dead_engine(message: &str) -> Error {
    Error::Engine(format!(
        "the engine failed and serves no more requests: {message}"
    ))
}

/// The text of a panic's payload (a `&str` or a `String` for `panic!` with a message).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Steps `engine` while there is work and handles commands between steps, until shutdown.
fn serve<B: Backend>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<u64, Route>,
    shared: &Shared,
    commands: &Receiver<Command>,
) {
    loop {
        // Block while idle; otherwise take whatever arrived since the last step.
        if !engine.has_work() {
            let Ok(cmd) = commands.recv() else { return };
            if handle(engine, routes, shared, cmd).is_break() {
                return;
            }
        }
        if intake(engine, routes, shared, commands).is_break() {
            return;
        }
        if !engine.has_work() {
            continue;
        }
        // The step's results (and the finished sequences' last deltas) first; then requests
        // that arrived while it ran join the next step, which starts (with async scheduling)
        // before the text and deltas of this one are made.
        let (deltas, errors) = engine.collect_step();
        dispatch(engine, routes, shared, deltas, errors);
        if intake(engine, routes, shared, commands).is_break() {
            return;
        }
        engine.launch_next();
        let (deltas, errors) = engine.emit();
        dispatch(engine, routes, shared, deltas, errors);
    }
}

/// Handles the commands already queued, at most [`MAX_COMMANDS_PER_STEP`] of them, with their
/// aborts in one batch; `Break` on shutdown.
fn intake<B: Backend>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<u64, Route>,
    shared: &Shared,
    commands: &Receiver<Command>,
) -> ControlFlow<()> {
    let mut aborts = HashSet::new();
    let mut flow = ControlFlow::Continue(());
    for _ in 0..MAX_COMMANDS_PER_STEP {
        let Ok(cmd) = commands.try_recv() else { break };
        match cmd {
            Command::Abort(id) => {
                aborts.insert(id);
            }
            cmd => {
                flow = handle(engine, routes, shared, cmd);
                if flow.is_break() {
                    break;
                }
            }
        }
    }
    if !aborts.is_empty() {
        let deltas = engine.abort_many(&aborts);
        publish(shared, engine);
        deliver(routes, deltas);
        for id in &aborts {
            routes.remove(id);
        }
    }
    flow
}

/// Handles one command; `Break` on shutdown (running requests get `Failed`).
fn handle<B: Backend>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<u64, Route>,
    shared: &Shared,
    cmd: Command,
) -> ControlFlow<()> {
    match cmd {
        Command::Add {
            request_id,
            prompt,
            params,
            priority,
            events,
        } => {
            let n = params.n;
            match engine.add_request(request_id, prompt, params, priority) {
                Ok(()) => {
                    routes.insert(request_id, Route { events, open: n });
                }
                Err(e) => {
                    let _ = events.send(RequestEvent::Failed(e));
                }
            }
            // The waiting count readers see includes the request before it leaves `queued`.
            publish(shared, engine);
            shared.queued.fetch_sub(n, Ordering::SeqCst);
        }
        Command::Abort(id) => {
            let deltas = engine.abort(id);
            publish(shared, engine);
            deliver(routes, deltas);
            routes.remove(&id);
        }
        Command::Shutdown => {
            for (_, r) in routes.drain() {
                let _ = r.events.send(RequestEvent::Failed(Error::Engine(
                    "the engine shut down".into(),
                )));
            }
            return ControlFlow::Break(());
        }
    }
    ControlFlow::Continue(())
}

/// Hands a step's deltas and failures to their requests: failed requests are aborted, and so
/// are requests whose caller went away (their blocks come back).
fn dispatch<B: Backend>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<u64, Route>,
    shared: &Shared,
    deltas: Vec<SeqDelta>,
    errors: Vec<(u64, Error)>,
) {
    let failed: Vec<_> = errors
        .into_iter()
        .filter_map(|(id, e)| {
            engine.abort(id);
            routes.remove(&id).map(|r| (r, e))
        })
        .collect();
    // Stats first: a caller that sees its request end must see the blocks it freed (a request
    // aborted while a step was in flight frees them when that step is collected).
    publish(shared, engine);
    for (r, e) in failed {
        let _ = r.events.send(RequestEvent::Failed(e));
    }
    let gone = deliver(routes, deltas);
    for id in &gone {
        engine.abort(*id);
        routes.remove(id);
    }
    if !gone.is_empty() {
        publish(shared, engine);
    }
}

/// Publishes the engine's stats for [`EngineHandle::stats`].
fn publish<B: Backend>(shared: &Shared, engine: &Engine<B>) {
    if let Ok(mut s) = shared.stats.lock() {
        *s = engine.stats();
    }
}

/// Sends deltas to their requests; returns requests whose receiver is gone.
fn deliver(routes: &mut HashMap<u64, Route>, deltas: Vec<SeqDelta>) -> Vec<u64> {
    let mut gone = Vec::new();
    for d in deltas {
        let id = d.request_id;
        let Some(route) = routes.get_mut(&id) else {
            continue;
        };
        let finished = d.finish_reason.is_some();
        if route.events.send(RequestEvent::Delta(d)).is_err() {
            gone.push(id);
            continue;
        }
        if finished {
            route.open -= 1;
            if route.open == 0 {
                routes.remove(&id);
            }
        }
    }
    gone
}

#[cfg(test)]
#[path = "engine_loop_panic_tests.rs"]
mod panic_tests;
