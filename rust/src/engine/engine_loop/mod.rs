//! The engine loop: one Rust thread owns the [`Engine`] and steps it while there is work;
//! callers talk to it through an [`EngineHandle`] (cheap to clone, usable from any thread).
//!
//! Commands go in over one channel; each request's outputs come back over its own channel as
//! [`RequestEvent`]s. A caller that drops its receiver has its request aborted at the next
//! step, freeing its blocks.
//!
//! A panic inside the loop (a bug, never a bad request; or a step that failed on a device that
//! can run nothing more, [`Backend::device_failure`](crate::backend::Backend::device_failure))
//! is caught: every request in flight gets `Failed`, the failure is published
//! ([`EngineHandle::failure`]: a node marks the model `failed`, and is unhealthy only when no
//! model can serve), and the thread stays to answer every later request with an error at once.
//! The engine is not restarted: its state (blocks, device buffers) is not known to be
//! consistent after a panic; a node's admin `load` starts a new one.
//!
//! A backend that can ([`Backend::sleep`](crate::backend::Backend::sleep): CUDA) puts its
//! memory to sleep on [`EngineHandle::sleep`] with the loop alive: the requests running end
//! with the reason given, the prefix cache is cleared, and requests that arrive while asleep
//! wait, queued, until [`EngineHandle::wake`].
//!
//! The caller's side is `handle.rs` ([`EngineHandle`], [`Submitted`], [`RequestEvent`]); the
//! loop thread's side is `serve_loop.rs` (and `sleep.rs`); `guard.rs` catches the loop's panic. They meet only
//! through the `Command`s below and the `Shared` state the loop publishes.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use tokio::sync::mpsc::UnboundedSender;

use super::EngineStats;
use crate::backend::SleepReport;
use crate::error::Result;
use crate::sampling::SamplingParams;

mod guard;
mod handle;
mod serve_loop;
mod sleep;

pub use handle::{EngineHandle, RequestEvent, Submitted};

/// What a handle sends the loop.
enum Command {
    Add {
        request_id: u64,
        prompt: Vec<u32>,
        params: Box<SamplingParams>,
        priority: i32,
        events: UnboundedSender<RequestEvent>,
    },
    Abort(u64),
    /// Put the backend's memory to sleep; running requests end with `reason`.
    Sleep {
        reason: String,
        reply: std::sync::mpsc::Sender<Result<SleepReport>>,
    },
    Wake {
        reply: std::sync::mpsc::Sender<Result<SleepReport>>,
    },
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
    /// Whether the backend's memory is asleep.
    asleep: std::sync::atomic::AtomicBool,
    /// Why the loop is being shut down, for the requests still running then
    /// ([`EngineHandle::shutdown_with`]).
    stop_reason: Mutex<Option<String>>,
}

/// Per-request bookkeeping of the loop.
struct Route {
    events: UnboundedSender<RequestEvent>,
    /// Sequences not finished yet.
    open: usize,
}
