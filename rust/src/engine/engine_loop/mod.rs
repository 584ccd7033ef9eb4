//! The engine loop: one Rust thread owns the [`Engine`] and steps it while there is work;
//! callers talk to it through an [`EngineHandle`] (cheap to clone, usable from any thread).
//!
//! Commands go in over one channel; each request's outputs come back over its own channel as
//! [`RequestEvent`]s. A caller that drops its receiver has its request aborted at the next
//! step, freeing its blocks.
//!
//! A panic inside the loop (a bug, never a bad request; or a step that failed on a device that
//! can run nothing more, [`Backend::device_failure`](crate::backend::Backend::device_failure))
//! is caught: the failure is published ([`EngineHandle::failure`]: a node marks the model
//! `failed`, and is unhealthy only when no model can serve), every request in flight gets
//! `Failed`, and then the engine is dropped on its own thread: the device is waited for, and
//! its weights, KV pool, step buffers and pinned copies are freed and its share of the card
//! given back ([`EngineHandle::failed_memory`] says when). The thread stays to answer every
//! later request with an error at once. The engine is not restarted: its state (blocks, device
//! buffers) is not known to be consistent after a panic; a node's admin `load` starts a new
//! one in the memory the old one gave back.
//!
//! A sticky CUDA error (an illegal address, a device-side assert) poisons the whole context,
//! which every engine of the process shares: each engine's next step fails, and each ends as
//! a panic does (its requests get the device's error; none waits). Their memory goes back to
//! the driver only once the last of them has dropped the context; until then a new engine
//! gets the poisoned context and fails to load, naming the error.
//!
//! A backend that can ([`Backend::sleep`](crate::backend::Backend::sleep): CUDA) puts its
//! memory to sleep on [`EngineHandle::sleep`] with the loop alive: the requests running end
//! with the reason given, the prefix cache is cleared, and requests that arrive while asleep
//! wait, queued, until [`EngineHandle::wake`].
//!
//! The caller's side is `handle.rs` ([`EngineHandle`], [`Submitted`], [`RequestEvent`]); the
//! loop thread's side is `serve_loop.rs` (and `sleep.rs`); `guard.rs` catches the loop's panic
//! and frees the failed engine. They meet only through the `Command`s below and the `Shared`
//! state the loop publishes.

use std::sync::atomic::{AtomicU8, AtomicUsize};
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

/// What became of a failed engine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedMemory {
    /// The loop is failing its requests and dropping the engine.
    Releasing = 0,
    /// Dropped: the memory and the card's share are back.
    Freed = 1,
    /// The drop panicked in turn: what it had not freed is held until the process ends.
    Kept = 2,
}

impl FailedMemory {
    fn from_u8(v: u8) -> FailedMemory {
        match v {
            1 => FailedMemory::Freed,
            2 => FailedMemory::Kept,
            _ => FailedMemory::Releasing,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailedMemory::Releasing => "releasing",
            FailedMemory::Freed => "freed",
            FailedMemory::Kept => "kept",
        }
    }
}

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
    /// After a panic: what became of the engine's memory (a [`FailedMemory`] as `u8`).
    release: AtomicU8,
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
