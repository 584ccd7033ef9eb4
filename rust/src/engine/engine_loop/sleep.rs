//! The loop's side of sleep and wake: a sleep ends the requests running (with the caller's
//! reason), lets a step in flight finish, clears the prefix cache (its blocks' contents go with
//! the pool) and puts the backend's memory to sleep; a wake brings it back. While asleep the
//! loop takes requests in but runs no step.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::{RequestEvent, Route, Shared};
use crate::backend::{Backend, SleepReport};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Puts `engine`'s memory to sleep (see the module docs); a no-op when it sleeps already.
pub(super) fn sleep<B: Backend>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<u64, Route>,
    shared: &Shared,
    reason: &str,
) -> Result<SleepReport> {
    if shared.asleep.load(Ordering::SeqCst) {
        return Ok(SleepReport::default());
    }
    // Refused before anything changes where the backend cannot sleep.
    if !engine.runner.backend().can_sleep() {
        return Err(Error::Unsupported(
            "this backend cannot sleep with its engine alive".into(),
        ));
    }
    let ids: HashSet<u64> = routes.keys().copied().collect();
    if !ids.is_empty() {
        engine.abort_many(&ids);
    }
    for (_, r) in routes.drain() {
        let _ = r
            .events
            .send(RequestEvent::Failed(Error::Engine(reason.into())));
    }
    // The step in flight still writes its blocks: they come back once it is collected.
    if engine.in_flight.is_some() {
        let _ = engine.collect_step();
    }
    let (free, total) = (engine.kv.num_free_blocks(), engine.kv.num_blocks());
    if engine.has_work() || free != total {
        return Err(Error::Engine(format!(
            "the engine still holds {} KV blocks after ending its requests: it cannot sleep",
            total - free
        )));
    }
    engine.kv.reset_prefix_cache();
    let backend = engine.runner.backend_mut();
    match backend.sleep() {
        Ok(report) => {
            shared.asleep.store(true, Ordering::SeqCst);
            Ok(report)
        }
        Err(e) => {
            // Whatever part went to sleep comes back, so that the next step finds it.
            let _ = backend.wake();
            Err(e)
        }
    }
}

/// Brings `engine`'s memory back; a no-op when awake. On failure it stays asleep.
pub(super) fn wake<B: Backend>(engine: &mut Engine<B>, shared: &Shared) -> Result<SleepReport> {
    if !shared.asleep.load(Ordering::SeqCst) {
        return Ok(SleepReport::default());
    }
    let report = engine.runner.backend_mut().wake()?;
    shared.asleep.store(false, Ordering::SeqCst);
    Ok(report)
}
