//! The shares of a card held by the engines of one process.
//!
//! `gpu_memory_utilization` is the fraction of the card's whole memory an engine may hold (as in
//! vLLM), so engines that share a card must be given fractions that sum to at most 1. Each
//! engine claims its fraction here before it allocates anything and gives it back when it is
//! dropped or put to sleep; a claim that does not fit beside the others is a clear error
//! rather than an engine that finds no memory left for its KV pool.

use std::collections::BTreeMap;
use std::sync::Mutex;

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
