//! What `infire.cluster` needs from the core: a model's fingerprint, and the prompt's block
//! hashes as the engine's prefix cache computes them (the router keys its affinity on them).

use std::path::PathBuf;

use pyo3::prelude::*;

use super::convert::to_pyerr;

/// The content fingerprint of the model at `path` (see `crate::fingerprint`), from its cache
/// when the files are unchanged. Hashes without holding the GIL.
#[pyfunction]
pub fn fingerprint(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(|| crate::fingerprint::fingerprint(&path))
        .map_err(to_pyerr)
}

/// The chain hashes of the first `max_blocks` full blocks of `token_ids` (blocks of
/// `block_size` tokens), as the engine's prefix cache keys them: equal lists mean equal
/// prefixes, and a replica that served a prefix holds its blocks while they stay cached.
#[pyfunction]
#[pyo3(signature = (token_ids, block_size, max_blocks=usize::MAX))]
pub fn prefix_block_hashes(
    token_ids: Vec<u32>,
    block_size: usize,
    max_blocks: usize,
) -> PyResult<Vec<u64>> {
    if block_size == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "block_size must be at least 1",
        ));
    }
    Ok(crate::kv::prefix_chain_hashes(
        &token_ids, block_size, max_blocks,
    ))
}
