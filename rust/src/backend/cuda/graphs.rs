//! CUDA graphs of decode steps, one per (batch-size bucket, decode-attention split count),
//! captured when the engine starts.
//!
//! A decode step is ~350 small launches; replaying them as one graph removes the host's launch
//! work and the gaps between kernels. The engine pads a decode-only batch to a bucket size
//! ([`bucket_rows`]) so that the kernels' grids and arguments repeat; the step's batch
//! description is uploaded to the same device addresses before each replay. Of the context
//! lengths a graph bakes in only decode attention's split count, which changes with the
//! block tables' width (a power of two) while few rows leave SMs idle; the width itself is
//! read from the device, and each row uses the splits its own length needs.
//!
//! A key's graph is captured the second time the key is seen (the first step runs eagerly and
//! creates everything a step needs: cuBLASLt plans, the RoPE table), from the operations the
//! model enqueues, and launched in place of them from then on. Capture ends where the host
//! first waits for results. The engine runs every (bucket, split count) twice on padding rows
//! when it starts (`Engine::new`, `Backend::decode_graph_shapes`), so that serving finds every
//! graph in place.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

use super::device_mem::cuda_err;
use crate::error::{Error, Result};

/// Decode batch sizes that get a graph: a batch of `n` rows is padded to the smallest bucket
/// ≥ `n`: 1, 2, 4, then every multiple of 8 (as vLLM's capture sizes), so at most 7 rows of
/// padding. Large batches are compute-bound (256 rows: ~4 TFLOP of GEMMs per step for an 8B
/// model), and a padded row costs as much as a real one there.
pub const BUCKETS: [usize; 35] = {
    let mut b = [0; 35];
    (b[0], b[1], b[2]) = (1, 2, 4);
    let mut i = 3;
    while i < 35 {
        b[i] = 8 * (i - 2);
        i += 1;
    }
    b
};

/// The bucket a decode batch of `rows` rows is padded to; `None` above the largest.
pub fn bucket_rows(rows: usize) -> Option<usize> {
    BUCKETS.iter().copied().find(|&b| b >= rows && rows > 0)
}

/// (rows, decode attention splits): what a captured graph is specialized for.
pub type GraphKey = (usize, usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Operations launch as they come.
    Eager,
    /// Operations are recorded into the graph of this key.
    Capturing(GraphKey),
    /// Operations are skipped; the graph of this key runs in their place.
    Replaying(GraphKey),
}

/// The graphs captured so far and what the current step does with them.
pub struct DecodeGraphs {
    graphs: RefCell<HashMap<GraphKey, CudaGraph>>,
    seen: RefCell<HashSet<GraphKey>>,
    mode: Cell<Mode>,
}

impl DecodeGraphs {
    pub fn new() -> DecodeGraphs {
        DecodeGraphs {
            graphs: RefCell::new(HashMap::new()),
            seen: RefCell::new(HashSet::new()),
            mode: Cell::new(Mode::Eager),
        }
    }

    /// Forgets every graph (their buffers' addresses changed).
    pub fn clear(&self) {
        self.graphs.borrow_mut().clear();
        self.seen.borrow_mut().clear();
    }

    /// Starts a step: replays the graph of `key` if there is one, captures it if the key was
    /// seen before, runs eagerly otherwise (and for steps that have no key).
    pub fn begin_step(&self, stream: &CudaStream, key: Option<GraphKey>) -> Result<()> {
        self.mode.set(Mode::Eager);
        let Some(key) = key else { return Ok(()) };
        if self.graphs.borrow().contains_key(&key) {
            self.mode.set(Mode::Replaying(key));
        } else if !self.seen.borrow_mut().insert(key) {
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                .map_err(cuda_err)?;
            self.mode.set(Mode::Capturing(key));
        }
        Ok(())
    }

    /// Whether the step's operations are to be skipped (a graph replays them).
    pub fn replaying(&self) -> bool {
        matches!(self.mode.get(), Mode::Replaying(_))
    }

    /// Ends the step's capture or launches its graph; a no-op for an eager step. `failed`
    /// says whether an operation of the step failed while it was captured: the capture is
    /// then ended and thrown away.
    pub fn finish_step(&self, stream: &Arc<CudaStream>, failed: bool) -> Result<()> {
        match self.mode.replace(Mode::Eager) {
            Mode::Eager => Ok(()),
            Mode::Replaying(key) => self.graphs.borrow()[&key].launch().map_err(cuda_err),
            Mode::Capturing(key) => {
                let graph = stream
                    .end_capture(CUgraphInstantiate_flags(0))
                    .map_err(cuda_err)?;
                if failed {
                    return Ok(());
                }
                let graph = graph.ok_or_else(|| {
                    Error::Engine("CUDA graph capture of a decode step returned nothing".into())
                })?;
                graph.launch().map_err(cuda_err)?;
                self.graphs.borrow_mut().insert(key, graph);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_batch_up_to_256_with_little_padding() {
        assert_eq!(bucket_rows(0), None);
        assert_eq!(bucket_rows(1), Some(1));
        assert_eq!(bucket_rows(3), Some(4));
        assert_eq!(bucket_rows(5), Some(8));
        assert_eq!(bucket_rows(65), Some(72));
        assert_eq!(bucket_rows(256), Some(256));
        assert_eq!(bucket_rows(257), None);
        for n in 1..=256 {
            let b = bucket_rows(n).unwrap();
            assert!(b >= n && b - n < 8, "{n} -> {b}");
        }
    }
}
