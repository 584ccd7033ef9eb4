//! `infire._core.Stream`: the cumulative outputs of one request, as a Python iterator.

use std::sync::Mutex;

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{output_dict, to_pyerr};
use crate::engine::engine_loop::{EngineHandle, Submitted};
use crate::engine::RequestOutput;
use crate::error::Error;

/// Iterator over the cumulative outputs of one request. Dropping it aborts the request.
#[pyclass(name = "Stream", module = "infire._core", frozen)]
pub struct PyStream {
    pub(super) handle: EngineHandle,
    pub(super) request_id: u64,
    pub(super) prompt: Option<String>,
    /// `None` once the final output was returned.
    pub(super) state: Mutex<Option<Submitted>>,
}

#[pymethods]
impl PyStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[getter]
    fn request_id(&self) -> String {
        self.request_id.to_string()
    }

    /// The next cumulative output. The state's lock is taken and held only without the GIL:
    /// a thread holding the lock never waits for the GIL, so threads sharing one stream take
    /// turns instead of deadlocking (one waits for the lock, the other for the GIL).
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let next = py.detach(|| -> Result<Option<RequestOutput>, Error> {
            let mut state = self
                .state
                .lock()
                .map_err(|_| Error::Engine("the stream's state is poisoned".into()))?;
            let Some(sub) = state.as_mut() else {
                return Ok(None);
            };
            match sub.advance() {
                Ok(true) => {
                    let output = sub.output.clone();
                    if output.finished() {
                        *state = None;
                    }
                    Ok(Some(output))
                }
                Ok(false) => {
                    *state = None;
                    Ok(None)
                }
                Err(e) => {
                    *state = None;
                    Err(e)
                }
            }
        });
        match next.map_err(to_pyerr)? {
            Some(output) => output_dict(py, &output, self.prompt.clone()),
            None => Err(PyStopIteration::new_err(())),
        }
    }

    /// Aborts the request if it is still running.
    fn close(&self) {
        match self.state.try_lock() {
            Ok(mut state) => {
                if state.take().is_some() {
                    self.handle.abort(self.request_id);
                }
            }
            // A `__next__` on another thread holds the state while it waits for the engine
            // (without the GIL, which this thread holds): waiting for the lock here would
            // deadlock. Aborting ends that wait; the iterator then finds the request over.
            Err(_) => self.handle.abort(self.request_id),
        }
    }
}

impl Drop for PyStream {
    fn drop(&mut self) {
        self.close();
    }
}
