//! The loop thread's body: steps the engine while there is work, takes in commands between
//! steps (at most [`MAX_COMMANDS_PER_STEP`], aborts in one batch), and routes each step's
//! deltas to their requests, aborting those whose caller went away.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use super::guard::{guarded, refuse_until_shutdown, release};
use super::sleep::{sleep, wake};
use super::{Command, RequestEvent, Route, Shared, MAX_COMMANDS_PER_STEP};
use crate::backend::Backend;
use crate::engine::{Engine, SeqDelta};
use crate::error::Error;

/// The loop thread's body: [`serve`] until shutdown, under [`guarded`]. With `fail_after`
/// (`INFIRE_FAIL_AFTER_STEPS`) the loop panics after that many steps. After a panic the
/// engine is freed here, once its requests have their error, and later commands are refused.
pub(super) fn run<B: Backend>(
    mut engine: Engine<B>,
    commands: Receiver<Command>,
    shared: &Shared,
    fail_after: Option<usize>,
) {
    let failed = guarded(shared, |routes| {
        serve(&mut engine, routes, shared, &commands, fail_after)
    });
    if let Some(message) = failed {
        release(shared, || wind_down(engine));
        refuse_until_shutdown(&commands, &message);
    }
}

/// Drops a panicked engine: the device finishes what was enqueued first (a step may still be
/// running and reading the buffers about to be freed). The step in flight is dropped, not
/// collected: its collection may be what panicked.
fn wind_down<B: Backend>(mut engine: Engine<B>) {
    if let Some(why) = engine.runner.backend_mut().device_failure() {
        eprintln!("infire: freeing the failed engine on a failed device ({why})");
    }
    drop(engine.in_flight.take());
    drop(engine);
}

/// Steps `engine` while there is work and handles commands between steps, until shutdown.
fn serve<B: Backend>(
    engine: &mut Engine<B>,
    routes: &mut HashMap<u64, Route>,
    shared: &Shared,
    commands: &Receiver<Command>,
    fail_after: Option<usize>,
) {
    let mut steps = 0usize;
    loop {
        // Block while idle (or asleep: requests wait for the wake); otherwise take whatever
        // arrived since the last step.
        let asleep = || shared.asleep.load(Ordering::SeqCst);
        if !engine.has_work() || asleep() {
            let Ok(cmd) = commands.recv() else { return };
            if handle(engine, routes, shared, cmd).is_break() {
                return;
            }
        }
        if intake(engine, routes, shared, commands).is_break() {
            return;
        }
        if !engine.has_work() || asleep() {
            continue;
        }
        // The step's results (and the finished sequences' last deltas) first; then requests
        // that arrived while it ran join the next step, which starts (with async scheduling)
        // before the text and deltas of this one are made.
        let (deltas, errors) = engine.collect_step();
        steps += 1;
        if fail_after.is_some_and(|n| steps >= n) {
            panic!("INFIRE_FAIL_AFTER_STEPS: the engine was told to fail after {steps} steps");
        }
        if !errors.is_empty() {
            // A device that can run nothing more ends the engine as a panic would.
            if let Some(why) = engine.runner.backend_mut().device_failure() {
                panic!("{why}");
            }
        }
        dispatch(engine, routes, shared, deltas, errors);
        if intake(engine, routes, shared, commands).is_break() {
            return;
        }
        // A sleep taken in just now leaves requests that arrived after it waiting.
        if !asleep() {
            engine.launch_next();
        }
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
            match engine.add_request(request_id, prompt, *params, priority) {
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
        Command::Sleep { reason, reply } => {
            let r = sleep(engine, routes, shared, &reason);
            publish(shared, engine);
            let _ = reply.send(r);
        }
        Command::Wake { reply } => {
            let _ = reply.send(wake(engine, shared));
        }
        Command::Shutdown => {
            let reason = shared
                .stop_reason
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or_else(|| "the engine shut down".into());
            for (_, r) in routes.drain() {
                let _ = r
                    .events
                    .send(RequestEvent::Failed(Error::Engine(reason.clone())));
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
