//! The loop's panic guard: a panic in the loop (a bug, never a bad request) fails every
//! request in flight and is published; then the engine's memory is freed ([`release`]) and the
//! thread answers every later request with the error until shutdown ([`refuse_until_shutdown`]).

use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use super::{Command, FailedMemory, RequestEvent, Route, Shared};
use crate::error::Error;

/// Runs `body` (which routes requests through the map it is given) and catches its panic:
/// then publishes the failure and fails every request in flight. Returns the panic's message
/// when `body` panicked.
pub(super) fn guarded(
    shared: &Shared,
    body: impl FnOnce(&mut HashMap<u64, Route>),
) -> Option<String> {
    let mut routes: HashMap<u64, Route> = HashMap::new();
    let served = catch_unwind(AssertUnwindSafe(|| body(&mut routes)));
    let panic = served.err()?;
    let message = panic_message(panic.as_ref());
    eprintln!("infire: the engine loop panicked ({message}); it serves no more requests");
    if let Ok(mut f) = shared.failure.lock() {
        *f = Some(message.clone());
    }
    for (_, r) in routes.drain() {
        let _ = r.events.send(RequestEvent::Failed(dead_engine(&message)));
    }
    Some(message)
}

/// Frees what a failed engine holds by running `free` (which drops it) and publishes the
/// outcome ([`FailedMemory`]). A drop that panics in turn (it met the inconsistency that made
/// the loop panic) is caught: whatever it did not free stays held until the process ends, and
/// the engine's memory is published as `Kept`.
pub(super) fn release(shared: &Shared, free: impl FnOnce()) {
    let outcome = match catch_unwind(AssertUnwindSafe(free)) {
        Ok(()) => {
            // The allocator keeps what the engine's threads freed in its arenas; a node reads
            // the resident size to see the memory come back.
            crate::server::memory::release_freed_memory();
            FailedMemory::Freed
        }
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            eprintln!("infire: the failed engine's memory could not all be freed ({message})");
            FailedMemory::Kept
        }
    };
    shared.release.store(outcome as u8, Ordering::SeqCst);
}

/// Answers every command with the failure (`message`) until shutdown: a request made to a
/// failed engine gets its error at once, never waits.
pub(super) fn refuse_until_shutdown(commands: &Receiver<Command>, message: &str) {
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Add { events, .. } => {
                let _ = events.send(RequestEvent::Failed(dead_engine(message)));
            }
            Command::Abort(_) => {}
            Command::Sleep { reply, .. } | Command::Wake { reply } => {
                let _ = reply.send(Err(dead_engine(message)));
            }
            Command::Shutdown => break,
        }
    }
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
