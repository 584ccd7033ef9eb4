//! A node: the models one server serves, each with its own engine thread while it is loaded,
//! and the memory they share.
//!
//! Every model costs a share of the node's memory: on the CPU its budget (else its weights,
//! step buffers and KV pool), on CUDA its `gpu_memory_utilization`. The models loaded at start
//! must fit together; a later load (`on_demand`, a wake, an admin `load`) puts the least
//! recently used idle models to sleep until it fits, and fails naming them when it cannot.
//!
//! States (`model_state.rs`): `ready` (engine running), `loading`, `sleeping` (a request wakes
//! it and waits, within `wake_timeout`), `unloaded` (no engine; requests are refused unless the
//! model is `on_demand`), `failed` (its engine died: requests get a 503 naming why, its loop
//! frees its memory and its share, `load` starts a new one; the other models serve on). On
//! CUDA a sleep keeps the engine, its kernels and its recorded graphs: the weights go to
//! pinned host memory and the KV pool (prefix cache included) is dropped, and a wake copies
//! the weights back to the same addresses. On the CPU, sleep and unload both stop the model's
//! engine: its KV pool and its weights are freed, and a wake loads the weights again from the
//! model file (usually still in the page cache). Requests running when a model is put down end
//! with an error that says so.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::memory::plan;
pub use super::model_state::{InFlight, Loaded, ModelSlot, ModelState};
use super::node_spec::ModelSpec;
use super::ApiError;
use crate::engine::launch::launch_files;
use crate::error::{Error, Result};
use crate::loader::open_model;

/// The longest a load waits for a failed engine's loop to free its memory (its drop waits
/// for the device, then frees: well under a second on a live device).
const RELEASE_WAIT: Duration = Duration::from_secs(30);

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
            .map(|(spec, plan)| Arc::new(ModelSlot::new(spec, plan)))
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
        let (before, kept) = {
            let mut i = slot.lock();
            if i.state == ModelState::Ready {
                return Ok(());
            }
            let before = i.state;
            // A sleeping engine is woken; a dead one goes (its loop has freed its memory, or
            // is freeing it: the shutdown below waits for that) and a new one starts.
            let kept = match before {
                ModelState::Sleeping => i.loaded.clone(),
                _ => i.loaded.take(),
            };
            slot.set(&mut i, ModelState::Loading);
            (before, kept)
        };
        let started = Instant::now();
        let result = self.make_room(slot).and_then(|()| match kept {
            Some(l) if before == ModelState::Sleeping => self.wake(slot, l),
            dead => {
                if let Some(l) = dead {
                    l.handle.shutdown();
                }
                self.launch(slot)
            }
        });
        let mut i = slot.lock();
        match result {
            Ok((loaded, measured_bytes)) => {
                i.loaded = Some(loaded);
                i.last_error = None;
                i.last_load_s = Some(started.elapsed().as_secs_f64());
                i.measured_bytes = measured_bytes.or(i.measured_bytes);
                tracing::info!(model = %slot.spec.name, seconds = i.last_load_s, "model ready");
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

    /// Wakes `slot`'s sleeping engine; where it cannot wake, stops it and loads the model anew.
    fn wake(&self, slot: &Arc<ModelSlot>, l: Loaded) -> Result<(Loaded, Option<usize>)> {
        match l.handle.wake() {
            Ok(report) => {
                tracing::info!(
                    model = %slot.spec.name,
                    seconds = report.seconds,
                    copied_bytes = report.copied_bytes,
                    copy_seconds = report.copy_seconds,
                    "woke the engine"
                );
                slot.lock().last_wake = Some(report);
                Ok((l, None))
            }
            Err(e) => {
                tracing::warn!(model = %slot.spec.name, "the engine did not wake ({e}): loading the model anew");
                slot.lock().loaded = None;
                l.handle
                    .shutdown_with(&format!("model {} could not wake", slot.spec.name));
                self.launch(slot)
            }
        }
    }

    /// Starts a new engine for `slot`; returns it and the resident memory it added.
    fn launch(&self, slot: &Arc<ModelSlot>) -> Result<(Loaded, Option<usize>)> {
        let rss = super::memory::rss_bytes();
        tracing::info!(model = %slot.spec.name, "loading {}", slot.spec.path.display());
        let files = open_model(&slot.spec.path)?;
        let l = launch_files(&slot.spec.path, files, &slot.plan.args)?;
        tracing::info!(model = %slot.spec.name, kv_cache_tokens = l.kv_capacity_tokens, "engine started");
        let loaded = Loaded {
            handle: l.handle,
            tokenizer: l.tokenizer,
            defaults: l.default_sampling,
            fingerprint: l.fingerprint,
        };
        let added = rss.and_then(|r| Some(super::memory::rss_bytes()?.saturating_sub(r)));
        Ok((loaded, added))
    }

    /// Puts idle models to sleep, least recently used first, until `slot` fits. A failed
    /// model is never put to sleep: its memory counts until its loop has freed it, which is
    /// waited for.
    fn make_room(&self, slot: &Arc<ModelSlot>) -> Result<()> {
        for other in self.models.iter().filter(|s| !Arc::ptr_eq(s, slot)) {
            if let Some(h) = other.handle().filter(|h| h.failure().is_some()) {
                h.wait_released(RELEASE_WAIT);
            }
        }
        loop {
            let loaded: Vec<&Arc<ModelSlot>> = self
                .models
                .iter()
                .filter(|s| !Arc::ptr_eq(s, slot) && s.lock().holds_memory())
                .collect();
            let used: f64 = loaded.iter().map(|s| s.plan.share).sum();
            if used + slot.plan.share <= 1.0 + 1e-9 {
                return Ok(());
            }
            let victim = loaded
                .iter()
                .filter(|s| {
                    let i = s.lock();
                    i.in_flight == 0 && i.state != ModelState::Failed
                })
                .min_by_key(|s| s.last_used.load(Ordering::Relaxed));
            let Some(victim) = victim else {
                let busy: Vec<String> = loaded
                    .iter()
                    .map(|s| format!("{} ({:.0}%)", s.spec.name, s.plan.share * 100.0))
                    .collect();
                return Err(Error::InvalidConfig(format!(
                    "model {} needs {:.0}% of the node's memory and the models loaded hold \
                     {:.0}% ({}), each with requests in flight or failed with its memory kept: \
                     none can be put to sleep",
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

    /// Puts `slot` down to `to` (sleeping or unloaded); requests still running end with
    /// `reason`. A sleep keeps the engine where its backend can sleep (CUDA: its memory goes,
    /// its kernels and graphs stay); otherwise, and for an unload, the engine stops. A model
    /// that is loading is left alone: `false`.
    pub fn put_down(&self, slot: &Arc<ModelSlot>, to: ModelState, reason: &str) -> bool {
        let (keep, loaded) = {
            let mut i = slot.lock();
            if i.state == ModelState::Loading {
                return false;
            }
            let was = i.state;
            if was == to {
                return true;
            }
            // An engine that sleeps alive stays in the slot (a wake finds it there); any other
            // leaves it now, so that no wake can find an engine that is stopping.
            let keep = to == ModelState::Sleeping
                && was == ModelState::Ready
                && i.loaded.as_ref().is_some_and(|l| l.handle.can_sleep());
            let loaded = if keep {
                i.loaded.clone()
            } else {
                i.loaded.take()
            };
            slot.set(&mut i, to);
            (keep, loaded)
        };
        let Some(l) = loaded else { return true };
        if keep {
            match l.handle.sleep(reason) {
                Ok(report) => {
                    tracing::info!(
                        model = %slot.spec.name,
                        seconds = report.seconds,
                        freed_bytes = report.device_bytes,
                        "the engine sleeps"
                    );
                    slot.lock().last_sleep = Some(report);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(model = %slot.spec.name, "the engine did not sleep ({e}): stopping it");
                    let mut i = slot.lock();
                    if i.loaded
                        .as_ref()
                        .is_some_and(|k| k.handle.same_engine(&l.handle))
                    {
                        i.loaded = None;
                    }
                }
            }
        }
        l.handle.shutdown_with(reason);
        drop(l);
        super::memory::release_freed_memory();
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
                    ModelState::Failed => {
                        let why = i.last_error.clone().unwrap_or_default();
                        return Err(failed(&slot.spec.name, &why));
                    }
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

    /// The models whose engine died, with why.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.models
            .iter()
            .filter_map(|s| {
                let i = s.lock();
                (i.state == ModelState::Failed).then(|| {
                    (
                        s.spec.name.clone(),
                        i.last_error.clone().unwrap_or_default(),
                    )
                })
            })
            .collect()
    }

    /// `Some(message)` when a model's engine has died and no model can serve any more (none is
    /// ready, loading, sleeping or loadable on demand): the node as a whole is then unhealthy.
    /// While another model serves, a failed one is refused alone.
    pub fn failure(&self) -> Option<String> {
        let failed = self.failed();
        if failed.is_empty() {
            return None;
        }
        let serving = self.models.iter().any(|s| match s.state() {
            ModelState::Ready | ModelState::Loading | ModelState::Sleeping => true,
            ModelState::Unloaded => s.spec.on_demand,
            ModelState::Failed => false,
        });
        let list: Vec<String> = failed.iter().map(|(n, f)| format!("{n}: {f}")).collect();
        (!serving).then(|| list.join("; "))
    }
}

/// 503 for a model whose engine died.
fn failed(name: &str, why: &str) -> ApiError {
    ApiError {
        code: Some("model_failed"),
        ..ApiError::with_status(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "model `{name}` failed and serves no requests: {why}; POST \
                 /v1/admin/models/{name}/load starts it again"
            ),
        )
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
