//! What the engines of one process share on a card: its CUDA context, and the shares of its
//! memory they hold.
//!
//! The context is the device's primary context, retained once per process and kept (as the
//! CUDA runtime, and so PyTorch, keeps it) unless a sticky error poisons it: otherwise the last
//! engine's drop releases it, the driver destroys it, and the next engine makes a new one,
//! paying its creation again, while libraries with per-context state (cuBLASLt) may still
//! hold state of the context that is gone. (An engine made after another's whole teardown
//! failed its first cuBLASLt GEMM on an H100 with `CUBLAS_STATUS_EXECUTION_FAILED`; with the
//! context kept, tests/test_gpu_engine.py, which makes such an engine, passed on an H100.)
//!
//! `gpu_memory_utilization` is the fraction of the card's whole memory an engine may hold (as in
//! vLLM), so engines that share a card must be given fractions that sum to at most 1. Each
//! engine claims its fraction here before it allocates anything and gives it back when it is
//! dropped or put to sleep; a claim that does not fit beside the others is a clear error
//! rather than an engine that finds no memory left for its KV pool.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaContext;

use super::device_mem::cuda_err;
use crate::error::{Error, Result};

/// Slack for fractions written in decimal (0.7 + 0.3 is 1.0000000000000002).
const EPSILON: f64 = 1e-9;

/// The claims of one process, by device and claim id.
#[derive(Default)]
pub struct Ledger {
    claims: BTreeMap<(usize, u64), f64>,
    next_id: u64,
}

impl Ledger {
    /// The fraction of `device` held by the claims of this ledger.
    pub fn held(&self, device: usize) -> f64 {
        self.claims
            .range((device, 0)..=(device, u64::MAX))
            .map(|(_, s)| s)
            .sum()
    }

    /// Claims `share` of `device`; fails, changing nothing, when the claims would sum past 1.
    pub fn claim(&mut self, device: usize, share: f64) -> Result<u64> {
        let held = self.held(device);
        if held + share > 1.0 + EPSILON {
            return Err(Error::InvalidConfig(format!(
                "gpu_memory_utilization={share} does not fit on GPU {device}: the other engines \
                 of this process hold {held:.3} of its memory (the shares of one card sum to at \
                 most 1); give this engine at most {:.3}, or shut one of the others down or put \
                 it to sleep",
                (1.0 - held).max(0.0)
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.claims.insert((device, id), share);
        Ok(id)
    }

    /// Gives a claim back.
    pub fn release(&mut self, device: usize, id: u64) {
        self.claims.remove(&(device, id));
    }
}

static LEDGER: Mutex<Ledger> = Mutex::new(Ledger {
    claims: BTreeMap::new(),
    next_id: 0,
});

fn ledger() -> std::sync::MutexGuard<'static, Ledger> {
    // The ledger is plain data, consistent between any two statements.
    LEDGER.lock().unwrap_or_else(|p| p.into_inner())
}

/// The primary context of `device`, made on first use with this process's settings and kept
/// for the process's life, unless it is found poisoned.
pub fn context(device: usize) -> Result<Arc<CudaContext>> {
    static CONTEXTS: Mutex<BTreeMap<usize, Arc<CudaContext>>> = Mutex::new(BTreeMap::new());
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = contexts.remove(&device) {
        if usable(&ctx).is_ok() {
            contexts.insert(device, ctx.clone());
            return Ok(ctx);
        }
        // A sticky error (an illegal address, a device-side assert) poisons a context for
        // good. Let go of it: once the engines still holding it have dropped it too, the
        // driver destroys it, and the context made below is a new one (engine_loop/mod.rs).
    }
    let ctx = CudaContext::new(device).map_err(cuda_err)?;
    usable(&ctx)?;
    // The engine threads wait for each step's results; blocking (instead of spinning) leaves
    // their cores free while the GPU works.
    ctx.set_blocking_synchronize().map_err(cuda_err)?;
    // One stream per engine, and every buffer used only on it: cudarc's per-buffer event
    // tracking (for multi-stream safety) would only add two event records per use.
    // SAFETY: no buffer exists yet in this context object (it is made here, once).
    unsafe { ctx.disable_event_tracking() };
    contexts.insert(device, ctx.clone());
    Ok(ctx)
}

/// Whether `ctx` takes work: a context poisoned by a sticky error fails every call, this
/// synchronization (which waits for the work other engines have queued) included.
fn usable(ctx: &CudaContext) -> Result<()> {
    ctx.bind_to_thread()
        .and_then(|()| ctx.synchronize())
        .map_err(|e| Error::Engine(format!("the GPU context is unusable: {e:?}")))
}

/// An engine's share of a card, given back on drop.
pub struct Claim {
    device: usize,
    id: u64,
}

impl Claim {
    /// Claims `share` of `device` for this process (see [`Ledger::claim`]).
    pub fn new(device: usize, share: f64) -> Result<Claim> {
        let id = ledger().claim(device, share)?;
        Ok(Claim { device, id })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        ledger().release(self.device, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_one_card_sum_to_at_most_one() {
        let mut l = Ledger::default();
        let a = l.claim(0, 0.5).unwrap();
        l.claim(0, 0.3).unwrap();
        let err = l.claim(0, 0.3).unwrap_err().to_string();
        assert!(
            err.contains("hold 0.800") && err.contains("at most 0.200"),
            "{err}"
        );
        // Another card is its own.
        l.claim(1, 0.9).unwrap();
        // A failed claim changed nothing; a released one makes room.
        assert!((l.held(0) - 0.8).abs() < 1e-12);
        l.release(0, a);
        l.claim(0, 0.7).unwrap();
        assert!((l.held(0) - 1.0).abs() < 1e-12);
    }
}
