//! Recording a decode step as a CUDA graph and replaying it: the primitives the step runner
//! (`crate::engine::runner`, which decides what to capture and when to replay) uses through
//! `Backend::{begin_capture, end_capture, replay}`.
//!
//! A graph replays the launches it recorded with their arguments: the step's batch
//! description is uploaded to the same device addresses before each replay (`StepMeta`, whose
//! array is reserved at start-up so that it never moves), and what a context length changes
//! is read from there (the block tables' width, the fewest keys per split), except decode
//! attention's split count, which is part of the graph's key.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

use super::device_mem::cuda_err;
use crate::error::{Error, Result};

/// A recorded decode step.
pub struct CudaStepGraph(CudaGraph);

// SAFETY: a graph is launched only by the thread that holds the engine (it moves with it into
// the engine's loop thread once, as the backend does); the CUDA handles inside may move
// between threads.
unsafe impl Send for CudaStepGraph {}

impl CudaStepGraph {
    /// Enqueues the recorded launches on the stream they were captured from.
    pub fn launch(&self) -> Result<()> {
        self.0.launch().map_err(cuda_err)
    }
}

/// Starts recording what is enqueued on `stream` (relaxed mode: the kernels' launches; nothing
/// that synchronizes may happen until [`end_capture`]).
pub fn begin_capture(stream: &CudaStream) -> Result<()> {
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(cuda_err)
}

/// Ends the recording on `stream` and instantiates its graph. `failed` is the first failure of
/// an operation while it recorded: the capture is then ended, thrown away, and the failure
/// returned.
pub fn end_capture(stream: &Arc<CudaStream>, failed: Option<Error>) -> Result<CudaStepGraph> {
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(cuda_err);
    if let Some(e) = failed {
        return Err(e);
    }
    graph?
        .map(CudaStepGraph)
        .ok_or_else(|| Error::Engine("CUDA graph capture of a decode step returned nothing".into()))
}
