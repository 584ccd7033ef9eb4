//! The CUDA kernels for inspection and the NVRTC compile tests (`infire.kernels`).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::to_pyerr;
use crate::error::Error;

/// The CUDA kernel files (`kernels/cuda/*.cu` stems).
#[pyfunction]
pub fn kernel_names() -> Vec<&'static str> {
    crate::backend::cuda::jit::names()
}

/// The full source NVRTC compiles for kernel file `name` (common header included).
#[pyfunction]
pub fn kernel_source(name: &str) -> PyResult<String> {
    crate::backend::cuda::jit::source(name).map_err(to_pyerr)
}

/// Compiles kernel file `name` with NVRTC for `arch` (e.g. "sm_90a") to a cubin or PTX.
#[pyfunction]
#[pyo3(signature = (name, arch, defines=None, dtype="bfloat16", target="cubin"))]
pub fn compile_kernel<'py>(
    py: Python<'py>,
    name: &str,
    arch: &str,
    defines: Option<&Bound<'py, PyDict>>,
    dtype: &str,
    target: &str,
) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    use crate::backend::cuda::jit::{compile, KernelDtype, KernelSpec, Target};
    let dtype = KernelDtype::from_name(dtype).ok_or_else(|| {
        to_pyerr(Error::InvalidRequest(format!(
            "dtype must be \"bfloat16\" or \"float16\", got {dtype:?}"
        )))
    })?;
    let target = match target {
        "cubin" => Target::Cubin,
        "ptx" => Target::Ptx,
        t => {
            return Err(to_pyerr(Error::InvalidRequest(format!(
                "target must be \"cubin\" or \"ptx\", got {t:?}"
            ))))
        }
    };
    let mut defs = Vec::new();
    if let Some(d) = defines {
        for (k, v) in d.iter() {
            let value = if v.is_none() {
                None
            } else {
                Some(v.str()?.to_string())
            };
            defs.push((k.extract::<String>()?, value));
        }
    }
    let spec = KernelSpec {
        name: name.to_string(),
        arch: arch.to_string(),
        dtype,
        defines: defs,
    };
    let bytes = py
        .detach(|| compile(&spec, target, None))
        .map_err(to_pyerr)?;
    Ok(pyo3::types::PyBytes::new(py, &bytes))
}
