//! Compiling every kernel file for the GPU in the background (NVRTC, or the disk cache),
//! while the weights load; loading the modules at the first use.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use cudarc::driver::CudaContext;
use rayon::prelude::*;

use super::Kernels;
use crate::backend::cuda::jit::{self, KernelDtype, KernelSpec, Target};
use crate::backend::AttentionShape;
use crate::error::{Error, Result};

type Compiled = std::result::Result<Vec<(String, Vec<u8>)>, String>;

/// Kernels being compiled on a background thread, loaded into the context on first use.
pub struct KernelSet {
    pending: Mutex<Option<JoinHandle<Compiled>>>,
    loaded: OnceLock<std::result::Result<Kernels, String>>,
    /// Whether to launch with programmatic dependent launch (where the GPU has it).
    pdl: bool,
}

impl KernelSet {
    /// Starts compiling every kernel file that `arch` runs (`jit::compiles_for`) for it,
    /// specialized for `shape` and `block_size` (and `extra_defines`,
    /// `Tuning::kernel_defines`), in parallel; with `pdl` they launch under programmatic
    /// dependent launch where the GPU has it.
    pub fn compile_in_background(
        arch: String,
        dtype: KernelDtype,
        shape: AttentionShape,
        block_size: usize,
        cache_dir: Option<PathBuf>,
        extra_defines: Vec<(String, Option<String>)>,
        pdl: bool,
    ) -> KernelSet {
        let defines: Vec<(String, Option<String>)> = [
            ("HEAD_DIM", shape.head_dim),
            ("NUM_HEADS", shape.num_heads),
            ("NUM_KV_HEADS", shape.num_kv_heads),
            ("KV_BLOCK_SIZE", block_size),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .chain(extra_defines)
        .collect();
        let handle = std::thread::spawn(move || {
            jit::names()
                .into_iter()
                .filter(|name| jit::compiles_for(name, &arch))
                .collect::<Vec<_>>()
                .par_iter()
                .map(|name| {
                    let spec = KernelSpec {
                        name: name.to_string(),
                        arch: arch.clone(),
                        dtype,
                        defines: defines.clone(),
                    };
                    jit::compile(&spec, Target::Cubin, cache_dir.as_deref())
                        .map(|cubin| (name.to_string(), cubin))
                        .map_err(|e| e.to_string())
                })
                .collect()
        });
        KernelSet {
            pending: Mutex::new(Some(handle)),
            loaded: OnceLock::new(),
            pdl,
        }
    }

    /// The loaded kernels; waits for the compilation the first time.
    pub fn get(&self, ctx: &Arc<CudaContext>) -> Result<&Kernels> {
        self.loaded
            .get_or_init(|| {
                let handle = self
                    .pending
                    .lock()
                    .map_err(|_| "kernel compilation lock poisoned".to_string())?
                    .take()
                    .ok_or("kernel compilation already consumed")?;
                let cubins = handle
                    .join()
                    .map_err(|_| "kernel compilation panicked".to_string())??;
                Kernels::load(ctx, cubins, self.pdl).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::Engine(e.clone()))
    }
}
