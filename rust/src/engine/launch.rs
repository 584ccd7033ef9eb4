//! Starting an engine on the backend a user asked for: opens the model, builds the backend,
//! loads the weights and spawns the engine loop. The Python API and the server both start
//! engines through [`launch`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::engine_loop::EngineHandle;
use super::{DeviceKind, Engine, EngineArgs, EngineConfig};
use crate::backend::cpu::CpuBackend;
use crate::backend::{KvDtype, KvLayout};
use crate::error::{Error, Result};
use crate::loader::{cache_root, open_model, ModelFiles};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::tuning::Tuning;
use crate::weights::quantize::LoadQuant;

/// A running engine and what its callers need to know about it.
pub struct Launched {
    pub handle: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub default_sampling: SamplingParams,
    pub kv_capacity_tokens: usize,
    /// `"cpu"` or `"cuda"`.
    pub device: &'static str,
    /// The processor's name for a GPU (e.g. "NVIDIA H200"), `"cpu"` otherwise.
    pub device_name: String,
    /// The model files' content fingerprint (see [`crate::fingerprint`]).
    pub fingerprint: String,
}

/// Which backend `args.device` selects: `None` for the CPU, `Some(ordinal)` for a GPU.
fn resolve_device(opts: &EngineArgs) -> Result<Option<usize>> {
    let gpus = cuda_device_count();
    match opts.device.as_str() {
        "cpu" => Ok(None),
        "auto" => Ok((gpus > 0).then_some(0)),
        d if d == "cuda" || d.starts_with("cuda:") => {
            let ordinal = match d.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse().map_err(|_| {
                    Error::InvalidConfig(format!("device {d:?}: expected cuda:<ordinal>"))
                })?,
            };
            if ordinal >= gpus {
                return Err(Error::InvalidConfig(format!(
                    "device {d:?} is not available: {gpus} CUDA device(s) found{}",
                    if cfg!(feature = "cuda") {
                        ""
                    } else {
                        " (this build has no CUDA backend)"
                    }
                )));
            }
            Ok(Some(ordinal))
        }
        d => Err(Error::InvalidConfig(format!(
            "device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got {d:?}"
        ))),
    }
}

/// Number of CUDA devices this build can use.
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        crate::backend::cuda::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// The kind of device `opts.device` selects (an error names a device that is not there).
pub fn device_kind(opts: &EngineArgs) -> Result<DeviceKind> {
    Ok(match resolve_device(opts)? {
        None => DeviceKind::Cpu,
        Some(_) => DeviceKind::Cuda,
    })
}

/// Opens `model`, loads it on the backend `opts` selects and spawns the engine loop; the
/// model's fingerprint is computed (or read from its cache) beside the load.
pub fn launch(model: &Path, opts: &EngineArgs) -> Result<Launched> {
    opts.validate()?;
    launch_files(model, open_model(model)?, opts)
}

/// [`launch`] for a model already opened from `model` (a node sizes its KV pool from the files
/// first).
pub fn launch_files(model: &Path, files: ModelFiles, opts: &EngineArgs) -> Result<Launched> {
    opts.validate()?;
    std::thread::scope(|s| {
        let fingerprint = s.spawn(|| crate::fingerprint::fingerprint(model));
        let launched = launch_engine(files, opts);
        let fingerprint = fingerprint
            .join()
            .map_err(|_| Error::Engine("hashing the model files panicked".into()))?;
        let mut launched = launched?;
        launched.fingerprint = fingerprint?;
        Ok(launched)
    })
}

/// [`launch_files`] without the fingerprint.
fn launch_engine(files: ModelFiles, opts: &EngineArgs) -> Result<Launched> {
    let tuning = Tuning::from_env();
    match resolve_device(opts)? {
        None => {
            let config = EngineConfig {
                step_trace: tuning.step_trace,
                ..opts.engine_config(DeviceKind::Cpu)
            };
            if !matches!(opts.dtype.as_str(), "auto" | "float32") {
                return Err(Error::InvalidConfig(format!(
                    "dtype {:?} is not supported on the CPU backend (use \"auto\" or \"float32\")",
                    opts.dtype
                )));
            }
            if opts.quantization.as_deref() == Some("fp8") || opts.fp8_kv_cache() {
                return Err(Error::InvalidConfig(
                    "quantization=\"fp8\" and kv_cache_dtype=\"fp8\" need a CUDA device (FP8 \
                     checkpoints load on the CPU dequantized to float32; the CPU quantizes \
                     with \"q8_0\" or \"q4_0\")"
                        .into(),
                ));
            }
            let quantize = opts
                .quantization
                .as_deref()
                .and_then(LoadQuant::from_option);
            if quantize.is_some() && opts.dtype != "auto" {
                return Err(Error::InvalidConfig(format!(
                    "quantization={:?} needs dtype \"auto\" (\"float32\" is the unquantized \
                     reference path)",
                    opts.quantization.as_deref().unwrap_or_default()
                )));
            }
            // "auto" keeps GGUF blocks quantized; "float32" is the f32 reference path.
            let backend = CpuBackend::for_model(&files.config, config.block_size)
                .keep_quantized(opts.dtype == "auto")
                .quantize_at_load(quantize);
            finish(Engine::new(backend, files, config)?, "cpu", "cpu".into())
        }
        #[cfg(feature = "cuda")]
        Some(ordinal) => {
            use crate::backend::cuda::{CudaBackend, CudaOptions};
            let config = EngineConfig {
                step_trace: tuning.step_trace.clone(),
                ..opts.engine_config(DeviceKind::Cuda)
            };
            if let Some(q) = opts.quantization.as_deref().filter(|&q| q != "fp8") {
                return Err(Error::InvalidConfig(format!(
                    "quantization={q:?} is for the CPU backend (CUDA quantizes at load with \
                     \"fp8\")"
                )));
            }
            let dtype = match opts.dtype.as_str() {
                "auto" | "bfloat16" => Some(KvDtype::Bf16),
                "float16" => Some(KvDtype::F16),
                _ => None,
            }
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "dtype {:?} is not supported on CUDA (use \"bfloat16\" or \"float16\")",
                    opts.dtype
                ))
            })?;
            // The KV layout is decided here, once, and the backend is made for it.
            let kv_dtype = if opts.fp8_kv_cache() {
                KvDtype::Fp8E4m3
            } else {
                dtype
            };
            let layout = KvLayout::for_model(&files.config, config.block_size, kv_dtype);
            let backend = CudaBackend::new(
                CudaOptions {
                    device: ordinal,
                    dtype,
                    quantize_fp8: opts.quantization.as_deref() == Some("fp8"),
                    gpu_memory_utilization: opts.gpu_memory_utilization,
                    claim_share: opts.kv_cache_tokens.is_none(),
                    kernel_cache_dir: kernel_cache_dir(),
                    tuning: tuning.clone(),
                },
                &files.config,
                layout,
            )?;
            let name = backend.device_name().to_string();
            finish(Engine::new(backend, files, config)?, "cuda", name)
        }
        #[cfg(not(feature = "cuda"))]
        Some(_) => unreachable!("no CUDA device is counted without the cuda feature"),
    }
}

fn finish<B: crate::backend::Backend + 'static>(
    engine: Engine<B>,
    device: &'static str,
    device_name: String,
) -> Result<Launched> {
    let tokenizer = Arc::new(engine.tokenizer().clone());
    let default_sampling = engine.default_sampling_params().clone();
    let kv_capacity_tokens = engine.limits().kv_capacity_tokens;
    Ok(Launched {
        handle: EngineHandle::spawn(engine)?,
        tokenizer,
        default_sampling,
        kv_capacity_tokens,
        device,
        device_name,
        fingerprint: String::new(),
    })
}

/// Where compiled kernels are kept: `kernels` under Infire's cache directory
/// ([`cache_root`]).
pub fn kernel_cache_dir() -> Option<PathBuf> {
    Some(cache_root()?.join("kernels"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(device: &str) -> EngineArgs {
        EngineArgs {
            device: device.into(),
            ..EngineArgs::default()
        }
    }

    #[test]
    fn devices_resolve_or_fail_clearly() {
        assert_eq!(resolve_device(&opts("cpu")).unwrap(), None);
        let gpus = cuda_device_count();
        assert_eq!(
            resolve_device(&opts("auto")).unwrap(),
            (gpus > 0).then_some(0)
        );
        let err = resolve_device(&opts("tpu")).unwrap_err().to_string();
        assert!(err.contains("device must be"), "{err}");
        let err = resolve_device(&opts("cuda:x")).unwrap_err().to_string();
        assert!(err.contains("cuda:<ordinal>"), "{err}");
        let err = resolve_device(&opts(&format!("cuda:{gpus}")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not available"), "{err}");
    }
}
