//! A node: the models one server serves, each with its own engine thread while it is loaded,
//! and the memory they share.
//!
//! Every model has a cost: its share of the node's memory (on the CPU its budget, or without
//! one what its weights, step buffers and KV pool take, over the node's memory; on CUDA the
//! share of the card it is given as `gpu_memory_utilization`). The models loaded at start must
//! fit together; a later load (`on_demand`, a wake, an admin `load`) puts the least recently
//! used idle models to sleep until it fits, and fails naming them when it cannot.
//!
//! States: `ready` (engine running), `loading`, `sleeping` (no engine; a request wakes it and
//! waits, within `wake_timeout`), `unloaded` (no engine; requests are refused unless the model
//! is `on_demand`). On the CPU, sleep and unload both stop the model's engine: its KV pool
//! (prefix cache included) and its weights are freed, and a wake loads the weights again from
//! the model file (usually still in the page cache). Requests running when a model is put down
//! end with an error that says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::memory::{plan, MemoryPlan};
use super::metrics::Metrics;
pub use super::model_state::{ModelState, ModelStatus};
use super::node_spec::ModelSpec;
use super::traffic::ClassQueues;
use super::ApiError;
use crate::engine::engine_loop::EngineHandle;
use crate::engine::launch::launch_files;
use crate::error::{Error, Result};
use crate::loader::open_model;
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

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
struct SlotInner {
    state: ModelState,
    loaded: Option<Loaded>,
    /// Requests holding the engine now ([`InFlight`]); a model with any is never put to sleep
    /// to make room.
    in_flight: usize,
    /// Why the last load failed.
    last_error: Option<String>,
    /// Seconds the last load or wake took, and the resident memory it added.
    last_load_s: Option<f64>,
    measured_bytes: Option<usize>,
}

/// One model of the node.
pub struct ModelSlot {
    pub spec: ModelSpec,
    pub plan: MemoryPlan,
    inner: Mutex<SlotInner>,
    /// Bumped on every state change; waiters watch it.
    changed: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    /// Requests of each traffic class waiting for their first token.
    pub queues: Arc<ClassQueues>,
    /// Milliseconds since the node started at this model's last request (for LRU).
    last_used: AtomicU64,
}

/// A request's hold on a model's engine, from routing to its last byte.
pub struct InFlight(Arc<ModelSlot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut i) = self.0.inner.lock() {
            i.in_flight -= 1;
        }
    }
}

impl ModelSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotInner> {
        // A poisoned lock means a panic elsewhere while holding it; the state is plain data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, inner: &mut SlotInner, state: ModelState) {
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

/// The models of one server.
pub struct Node {
    pub models: Vec<Arc<ModelSlot>>,
    /// One load at a time: the memory arithmetic of a load holds until it is done.
    load_lock: Mutex<()>,
    epoch: Instant,
}

impl Node {
    /// Plans every model's memory (an error at once when a budget cannot hold its model or the
    /// models loaded at start do not fit together), then loads those not `on_demand`.
    pub fn start(specs: Vec<ModelSpec>, node_memory: Option<usize>) -> Result<Arc<Node>> {
        let plans = plan(&specs, node_memory)?;
        let models = specs
            .into_iter()
            .zip(plans)
            .map(|(spec, plan)| {
                Arc::new(ModelSlot {
                    spec,
                    plan,
                    inner: Mutex::new(SlotInner {
                        state: ModelState::Unloaded,
                        loaded: None,
                        in_flight: 0,
                        last_error: None,
                        last_load_s: None,
                        measured_bytes: None,
                    }),
                    changed: watch::channel(0).0,
                    metrics: Arc::new(Metrics::default()),
                    queues: Arc::new(ClassQueues::default()),
                    last_used: AtomicU64::new(0),
                })
            })
            .collect();
        let node = Arc::new(Node {
            models,
            load_lock: Mutex::new(()),
            epoch: Instant::now(),
        });
        for slot in node.models.iter().filter(|s| !s.spec.on_demand) {
            node.load(slot)?;
        }
        Ok(node)
    }

    /// The model that `name` (a served name or an alias) names.
    pub fn find(&self, name: &str) -> Option<&Arc<ModelSlot>> {
        self.models
            .iter()
            .find(|s| s.spec.names().any(|n| n == name))
    }

    /// Every served name, for error messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.models.iter().map(|s| s.spec.name.as_str()).collect();
        names.join("`, `")
    }

    /// Loads (or wakes) `slot`, putting least recently used idle models to sleep when it does
    /// not fit beside the loaded ones. Blocks until the engine is ready.
    pub fn load(&self, slot: &Arc<ModelSlot>) -> Result<()> {
        let _one_load = self.load_lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = {
            let mut i = slot.lock();
            if i.state == ModelState::Ready {
                return Ok(());
            }
            let before = i.state;
            slot.set(&mut i, ModelState::Loading);
            before
        };
        let started = Instant::now();
        let rss = super::memory::rss_bytes();
        let result = self.make_room(slot).and_then(|()| {
            tracing::info!(model = %slot.spec.name, "loading {}", slot.spec.path.display());
            launch_files(
                &slot.spec.path,
                open_model(&slot.spec.path)?,
                &slot.plan.args,
            )
        });
        let mut i = slot.lock();
        match result {
            Ok(l) => {
                i.loaded = Some(Loaded {
                    handle: l.handle,
                    tokenizer: l.tokenizer,
                    defaults: l.default_sampling,
                    fingerprint: l.fingerprint,
                });
                i.last_error = None;
                i.last_load_s = Some(started.elapsed().as_secs_f64());
                i.measured_bytes =
                    rss.and_then(|r| Some(super::memory::rss_bytes()?.saturating_sub(r)));
                tracing::info!(model = %slot.spec.name, seconds = i.last_load_s, kv_cache_tokens = l.kv_capacity_tokens, "model ready");
                slot.set(&mut i, ModelState::Ready);
                Ok(())
            }
            Err(e) => {
                i.last_error = Some(e.to_string());
                slot.set(&mut i, before);
                Err(e)
            }
        }
    }

    /// Puts idle models to sleep, least recently used first, until `slot` fits.
    fn make_room(&self, slot: &Arc<ModelSlot>) -> Result<()> {
        loop {
            let loaded: Vec<&Arc<ModelSlot>> = self
                .models
                .iter()
                .filter(|s| !Arc::ptr_eq(s, slot) && s.lock().loaded.is_some())
                .collect();
            let used: f64 = loaded.iter().map(|s| s.plan.share).sum();
            if used + slot.plan.share <= 1.0 + 1e-9 {
                return Ok(());
            }
            let victim = loaded
                .iter()
                .filter(|s| s.lock().in_flight == 0)
                .min_by_key(|s| s.last_used.load(Ordering::Relaxed));
            let Some(victim) = victim else {
                let busy: Vec<String> = loaded
                    .iter()
                    .map(|s| format!("{} ({:.0}%)", s.spec.name, s.plan.share * 100.0))
                    .collect();
                return Err(Error::InvalidConfig(format!(
                    "model {} needs {:.0}% of the node's memory and the models loaded hold \
                     {:.0}% ({}), each with requests in flight: none can be put to sleep",
                    slot.spec.name,
                    slot.plan.share * 100.0,
                    used * 100.0,
                    busy.join(", ")
                )));
            };
            let reason = format!(
                "model {} was put to sleep to make room for {}",
                victim.spec.name, slot.spec.name
            );
            tracing::info!("{reason}");
            self.put_down(victim, ModelState::Sleeping, &reason);
        }
    }

    /// Stops `slot`'s engine (if loaded) and leaves it `to` (sleeping or unloaded); requests
    /// still running end with `reason`. A model that is loading is left alone: `false`.
    pub fn put_down(&self, slot: &Arc<ModelSlot>, to: ModelState, reason: &str) -> bool {
        let loaded = {
            let mut i = slot.lock();
            if i.state == ModelState::Loading {
                return false;
            }
            let loaded = i.loaded.take();
            slot.set(&mut i, to);
            loaded
        };
        if let Some(l) = loaded {
            l.handle.shutdown_with(reason);
            drop(l);
            super::memory::release_freed_memory();
        }
        true
    }

    /// Waits until `slot` is ready, starting its load when it sleeps (or is unloaded and
    /// `on_demand`), for at most `timeout`; then holds it for one request.
    pub async fn ready(
        self: &Arc<Self>,
        slot: &Arc<ModelSlot>,
        timeout: Duration,
    ) -> Result<(Loaded, InFlight), ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = slot.changed.subscribe();
        let mut started = false;
        loop {
            {
                let mut i = slot.lock();
                match i.state {
                    ModelState::Ready => {
                        let loaded = i.loaded.clone().expect("a ready model has an engine");
                        i.in_flight += 1;
                        let ms = self.epoch.elapsed().as_millis() as u64;
                        slot.last_used.store(ms, Ordering::Relaxed);
                        return Ok((loaded, InFlight(slot.clone())));
                    }
                    ModelState::Loading => {}
                    ModelState::Unloaded if !slot.spec.on_demand => {
                        return Err(unavailable(format!(
                            "model `{}` is unloaded; load it with POST /v1/admin/models/{}/load",
                            slot.spec.name, slot.spec.name
                        )));
                    }
                    ModelState::Sleeping | ModelState::Unloaded if started => {
                        let why = i
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "it was put down again".into());
                        return Err(unavailable(format!(
                            "model `{}` could not be loaded: {why}",
                            slot.spec.name
                        )));
                    }
                    ModelState::Sleeping | ModelState::Unloaded => {
                        started = true;
                        let (node, slot) = (self.clone(), slot.clone());
                        tokio::task::spawn_blocking(move || node.load(&slot));
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(unavailable(format!(
                    "model `{}` did not become ready within {:.1} s (it is {})",
                    slot.spec.name,
                    timeout.as_secs_f64(),
                    slot.state().as_str()
                )));
            }
        }
    }

    /// Stops every engine (at shutdown).
    pub fn shutdown(&self) {
        for slot in &self.models {
            self.put_down(slot, ModelState::Unloaded, "the server shut down");
        }
    }

    /// `Some(message)` once a loaded model's engine has died of a panic.
    pub fn failure(&self) -> Option<String> {
        self.models
            .iter()
            .filter_map(|s| {
                s.handle()?
                    .failure()
                    .map(|f| format!("{}: {f}", s.spec.name))
            })
            .next()
    }
}

/// 503 for a model that is not ready, naming why.
fn unavailable(message: String) -> ApiError {
    ApiError {
        code: Some("model_not_ready"),
        retry_after: Some(1),
        ..ApiError::with_status(axum::http::StatusCode::SERVICE_UNAVAILABLE, message)
    }
}
