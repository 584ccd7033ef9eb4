//! A model of the node: where it is in its life ([`ModelState`]), what requests need of its
//! engine ([`Loaded`]), and its slot ([`ModelSlot`]), which holds both and what `/v1/models`
//! and the admin API say of it ([`ModelStatus`]).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::memory::MemoryPlan;
use super::metrics::Metrics;
use super::node_spec::ModelSpec;
use super::traffic::ClassQueues;
use crate::backend::SleepReport;
use crate::engine::engine_loop::{EngineHandle, FailedMemory};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Ready,
    Loading,
    /// Its memory is freed: on CUDA the engine stays with its weights in pinned host memory;
    /// elsewhere the engine is stopped.
    Sleeping,
    Unloaded,
    /// Its engine died (a panic, a device error) and frees its memory on its own thread;
    /// `load` starts a new one.
    Failed,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Ready => "ready",
            ModelState::Loading => "loading",
            ModelState::Sleeping => "sleeping",
            ModelState::Unloaded => "unloaded",
            ModelState::Failed => "failed",
        }
    }
}

/// What `/v1/models` and the admin API say of a model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub state: &'static str,
    pub in_flight: usize,
    pub budget_bytes: Option<usize>,
    pub share: f64,
    pub kv_cache_tokens: Option<usize>,
    /// Seconds the last load or wake took.
    pub last_load_s: Option<f64>,
    pub measured_bytes: Option<usize>,
    /// Why the last load failed, or why the engine died (state `failed`).
    pub last_error: Option<String>,
    /// A failed engine's memory: `releasing`, `freed` (its share is free for a load) or
    /// `kept` (its drop failed: held until the process ends).
    pub failed_memory: Option<&'static str>,
    /// The last sleep that kept the engine (CUDA): its seconds and the device bytes it freed.
    pub last_sleep_s: Option<f64>,
    pub sleep_freed_bytes: Option<usize>,
    /// The last wake of a kept engine: the weight bytes copied back and that copy's seconds.
    pub wake_copied_bytes: Option<usize>,
    pub wake_copy_s: Option<f64>,
}

/// A loaded model's engine and what requests need of it.
#[derive(Clone)]
pub struct Loaded {
    pub handle: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub defaults: SamplingParams,
    /// The model's content fingerprint (OpenAI's `system_fingerprint`).
    pub fingerprint: String,
}

/// What changes as a model loads and sleeps.
pub(super) struct SlotInner {
    pub state: ModelState,
    /// The engine: while ready, and while sleeping where the engine sleeps alive.
    pub loaded: Option<Loaded>,
    /// Requests holding the engine now ([`InFlight`]); a model with any is never put to sleep
    /// to make room.
    pub in_flight: usize,
    /// Why the last load failed, or why the engine died.
    pub last_error: Option<String>,
    /// Seconds the last load or wake took, and the resident memory it added.
    pub last_load_s: Option<f64>,
    pub measured_bytes: Option<usize>,
    pub last_sleep: Option<SleepReport>,
    pub last_wake: Option<SleepReport>,
}

impl SlotInner {
    /// Whether the model's memory is on the device (or in the host's, on the CPU) now: a
    /// ready or loading engine's is; a sleeping one's is not; a failed one's until its loop
    /// has freed it.
    pub fn holds_memory(&self) -> bool {
        let Some(l) = &self.loaded else { return false };
        match self.state {
            ModelState::Sleeping => false,
            ModelState::Failed => l.handle.failed_memory() != Some(FailedMemory::Freed),
            _ => true,
        }
    }
}

/// One model of the node.
pub struct ModelSlot {
    pub spec: ModelSpec,
    pub plan: MemoryPlan,
    pub(super) inner: Mutex<SlotInner>,
    /// Bumped on every state change; waiters watch it.
    pub(super) changed: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    /// Requests of each traffic class waiting for their first token.
    pub queues: Arc<ClassQueues>,
    /// Milliseconds since the node started at this model's last request (for LRU).
    pub(super) last_used: AtomicU64,
}

/// A request's hold on a model's engine, from routing to its last byte.
pub struct InFlight(pub(super) Arc<ModelSlot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

impl ModelSlot {
    pub(super) fn new(spec: ModelSpec, plan: MemoryPlan) -> ModelSlot {
        ModelSlot {
            spec,
            plan,
            inner: Mutex::new(SlotInner {
                state: ModelState::Unloaded,
                loaded: None,
                in_flight: 0,
                last_error: None,
                last_load_s: None,
                measured_bytes: None,
                last_sleep: None,
                last_wake: None,
            }),
            changed: watch::channel(0).0,
            metrics: Arc::new(Metrics::default()),
            queues: Arc::new(ClassQueues::default()),
            last_used: AtomicU64::new(0),
        }
    }

    /// The slot's state, locked; a ready model whose engine has died is marked `failed` here
    /// (with the engine's reason), so that every reader sees it.
    pub(super) fn lock(&self) -> MutexGuard<'_, SlotInner> {
        // A poisoned lock means a panic elsewhere while holding it; the state is plain data.
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if i.state == ModelState::Ready {
            if let Some(reason) = i.loaded.as_ref().and_then(|l| l.handle.failure()) {
                tracing::error!(model = %self.spec.name, "the model's engine failed: {reason}");
                i.last_error = Some(reason);
                self.set(&mut i, ModelState::Failed);
            }
        }
        i
    }

    pub(super) fn set(&self, inner: &mut SlotInner, state: ModelState) {
        inner.state = state;
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn state(&self) -> ModelState {
        self.lock().state
    }

    pub fn status(&self) -> ModelStatus {
        let i = self.lock();
        ModelStatus {
            state: i.state.as_str(),
            in_flight: i.in_flight,
            budget_bytes: self.plan.budget_bytes,
            share: self.plan.share,
            kv_cache_tokens: self.plan.args.kv_cache_tokens,
            last_load_s: i.last_load_s,
            measured_bytes: i.measured_bytes,
            last_error: i.last_error.clone(),
            failed_memory: (i.state == ModelState::Failed)
                .then(|| i.loaded.as_ref()?.handle.failed_memory())
                .flatten()
                .map(FailedMemory::as_str),
            last_sleep_s: i.last_sleep.map(|r| r.seconds),
            sleep_freed_bytes: i.last_sleep.map(|r| r.device_bytes),
            wake_copied_bytes: i.last_wake.map(|r| r.copied_bytes),
            wake_copy_s: i.last_wake.map(|r| r.copy_seconds),
        }
    }

    /// The engine's handle while loaded.
    pub fn handle(&self) -> Option<EngineHandle> {
        self.lock().loaded.as_ref().map(|l| l.handle.clone())
    }

    /// The fingerprint of the files last loaded (none before the first load).
    pub fn fingerprint(&self) -> Option<String> {
        let i = self.lock();
        i.loaded.as_ref().map(|l| l.fingerprint.clone())
    }
}
