//! The loop's panic guard: a panic in the loop (a bug, never a bad request) fails every
//! request in flight, is published, and turns the thread into one that answers every later
//! request with the error until shutdown.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;

use super::{Command, RequestEvent, Route, Shared};
use crate::error::Error;

/// Runs `body` (which routes requests through the map it is given) and catches its panic: then
/// fails every request in flight, publishes the failure, and answers every later request with
/// the error until shutdown (see the module docs). Returns whether `body` panicked.
pub(super) fn guarded(
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
            Command::Sleep { reply, .. } | Command::Wake { reply } => {
                let _ = reply.send(Err(dead_engine(&message)));
            }
            Command::Shutdown => break,
        }
    }
    true
}

/// The error requests get from an engine whose loop panicked with `message`.
pub(super) fn dead_engine(message: &str) -> Error {
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

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
