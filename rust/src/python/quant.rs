//! Quantization at load as a function of bytes (`infire._core.quantize_rows`), so that the
//! tests compare its blocks with a numpy copy of ggml's reference quantizer.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::convert::to_pyerr;
use crate::error::Error;
use crate::weights::quantize::LoadQuant;

/// The blocks `quantization=format` ("q8_0" or "q4_0") makes of rows of `cols` values given
/// as little-endian `dtype` bytes ("BF16", "F16" or "F32").
#[pyfunction]
pub fn quantize_rows<'py>(
    py: Python<'py>,
    format: &str,
    dtype: &str,
    data: &[u8],
    cols: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let bad = |m: String| to_pyerr(Error::InvalidConfig(m));
    let q = LoadQuant::from_option(format).ok_or_else(|| {
        bad(format!(
            "format must be \"q8_0\" or \"q4_0\", got {format:?}"
        ))
    })?;
    let size = if dtype == "F32" { 4 } else { 2 };
    let rows = data.len() / (cols * size).max(1);
    let mut out = vec![0u8; rows * q.row_bytes(cols)];
    if !q.quantize_bytes(dtype, data, cols, &mut out) {
        return Err(bad(format!(
            "cannot quantize {} bytes of {dtype} in rows of {cols} (F32/F16/BF16, whole rows \
             of a multiple of 32 finite values)",
            data.len()
        )));
    }
    Ok(PyBytes::new(py, &out))
}
