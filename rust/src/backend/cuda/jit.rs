//! Run-time compilation of the CUDA kernels in `kernels/cuda/` with NVRTC.
//!
//! The sources are embedded in the binary. A kernel file is compiled as `common.cuh` followed by
//! the file itself, specialized with `-D` constants for the model (head_dim, heads, block size)
//! and the activation dtype, for the device's architecture (`sm_90a` on Hopper). Cubin is the
//! product: cubin from a newer NVRTC 13.x loads on a CUDA 13.0 driver where PTX would not.
//! Results are cached on disk under a hash of source, options, NVRTC version and arch, so an
//! engine that starts again with the same model loads its kernels without compiling.
//!
//! NVRTC and its headers are found at run time: libnvrtc through the loader's search path (the
//! Python layer preloads the one from the `nvidia-cuda-nvrtc` wheel), `cuda_bf16.h` through
//! `INFIRE_CUDA_INCLUDE`, `CUDA_HOME`/`CUDA_PATH`, or `/usr/local/cuda`.

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::error::{Error, Result};

/// `kernels/cuda/common.cuh`: the dtype, conversions, vector loads and reductions every kernel
/// file uses. Prepended to each file before compiling.
const COMMON: &str = include_str!("../../../../kernels/cuda/common.cuh");

/// The kernel files, by stem. Each file may define several `extern "C"` kernels.
const SOURCES: &[(&str, &str)] = &[
    (
        "decode_attention",
        include_str!("../../../../kernels/cuda/decode_attention.cu"),
    ),
    (
        "embedding",
        include_str!("../../../../kernels/cuda/embedding.cu"),
    ),
    ("fp8", include_str!("../../../../kernels/cuda/fp8.cu")),
    (
        "fp8_fused",
        include_str!("../../../../kernels/cuda/fp8_fused.cu"),
    ),
    ("gemv", include_str!("../../../../kernels/cuda/gemv.cu")),
    (
        "gemv_fp8",
        include_str!("../../../../kernels/cuda/gemv_fp8.cu"),
    ),
    (
        "gemv_fp8_mma",
        include_str!("../../../../kernels/cuda/gemv_fp8_mma.cu"),
    ),
    (
        "gather_rows",
        include_str!("../../../../kernels/cuda/gather_rows.cu"),
    ),
    (
        "prefill_attention",
        include_str!("../../../../kernels/cuda/prefill_attention.cu"),
    ),
    (
        "qk_norm",
        include_str!("../../../../kernels/cuda/qk_norm.cu"),
    ),
    (
        "rms_norm",
        include_str!("../../../../kernels/cuda/rms_norm.cu"),
    ),
    (
        "rope_cache_write",
        include_str!("../../../../kernels/cuda/rope_cache_write.cu"),
    ),
    (
        "sampling",
        include_str!("../../../../kernels/cuda/sampling.cu"),
    ),
    (
        "silu_mul",
        include_str!("../../../../kernels/cuda/silu_mul.cu"),
    ),
];

/// Kernel files that need a newer GPU than the rest (sm_80), with the oldest compute capability
/// (major * 10 + minor) they compile for: `gemv_fp8_mma` converts e4m3 codes with an sm_89
/// instruction. Elsewhere the engine does without them (`kernels/mod.rs`).
const MIN_CAPABILITY: &[(&str, u32)] = &[("gemv_fp8_mma", 89)];

/// What NVRTC produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for exactly the requested arch (what the engine loads).
    Cubin,
    /// PTX text (for inspection and for tests that load kernels another way).
    Ptx,
}

/// Activation dtype the kernels are specialized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelDtype {
    Bf16,
    F16,
}

impl KernelDtype {
    /// The dtype by its torch name: `"bfloat16"` or `"float16"`.
    pub fn from_name(name: &str) -> Option<KernelDtype> {
        match name {
            "bfloat16" => Some(KernelDtype::Bf16),
            "float16" => Some(KernelDtype::F16),
            _ => None,
        }
    }

    /// The KV dtype of a cache in this dtype.
    pub fn kv_dtype(self) -> crate::backend::KvDtype {
        match self {
            KernelDtype::Bf16 => crate::backend::KvDtype::Bf16,
            KernelDtype::F16 => crate::backend::KvDtype::F16,
        }
    }

    fn define(self) -> &'static str {
        match self {
            KernelDtype::Bf16 => "INFIRE_DTYPE_BF16",
            KernelDtype::F16 => "INFIRE_DTYPE_F16",
        }
    }
}

/// One compilation: a kernel file, its `-D` constants, the dtype and the arch.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// File stem in `kernels/cuda/` (see [`names`]).
    pub name: String,
    /// `sm_90a`, `sm_80`, ...
    pub arch: String,
    pub dtype: KernelDtype,
    /// `-D NAME=VALUE` (or `-D NAME` when the value is `None`), in this order.
    pub defines: Vec<(String, Option<String>)>,
}

/// The kernel file stems, sorted.
pub fn names() -> Vec<&'static str> {
    SOURCES.iter().map(|(n, _)| *n).collect()
}

/// Whether kernel file `name` compiles for `arch` (`sm_90a`, `sm_80`, ...; see
/// [`arch_for`]).
pub fn compiles_for(name: &str, arch: &str) -> bool {
    let capability = arch
        .strip_prefix("sm_")
        .map(|a| a.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
        .and_then(|a| a.parse::<u32>().ok())
        .unwrap_or(0);
    MIN_CAPABILITY
        .iter()
        .all(|&(file, min)| file != name || capability >= min)
}

/// The full source NVRTC compiles for `name`: `common.cuh` then the file.
pub fn source(name: &str) -> Result<String> {
    let (_, body) = SOURCES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        Error::InvalidRequest(format!(
            "no CUDA kernel named {name:?}; known: {}",
            names().join(", ")
        ))
    })?;
    Ok(format!("{COMMON}\n#line 1 \"{name}.cu\"\n{body}"))
}

/// The architecture NVRTC targets for a device of compute capability `major.minor`: the
/// arch-specific `sm_90a` on Hopper (wgmma, setmaxnreg), plain `sm_XY` elsewhere.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".into()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// NVRTC's version as `(major, minor)`. Loads libnvrtc on first use.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both out-pointers are valid for writes.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Engine(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// Fails with a clear error, instead of cudarc's panic, when libnvrtc cannot be loaded.
fn ensure_nvrtc() -> Result<()> {
    super::libs::preload();
    // SAFETY: only tries to dlopen the library by its usual names.
    if unsafe { nvrtc_sys::is_culib_present() } {
        return Ok(());
    }
    Err(Error::Engine(
        "NVRTC (libnvrtc.so.13) was not found: install the CUDA 13 toolkit or \
         `pip install nvidia-cuda-nvrtc==13.0.*`, or add its lib directory to LD_LIBRARY_PATH"
            .into(),
    ))
}

/// Directories searched for `cuda_bf16.h`: `INFIRE_CUDA_INCLUDE` (colon-separated), then
/// `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`.
fn include_dirs() -> Result<Vec<PathBuf>> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dirs) = std::env::var("INFIRE_CUDA_INCLUDE") {
        candidates.extend(std::env::split_paths(&dirs));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = std::env::var(var) {
            candidates.push(Path::new(&root).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    let found: Vec<PathBuf> = candidates
        .into_iter()
        .filter(|d| d.join("cuda_bf16.h").is_file())
        .collect();
    if found.is_empty() {
        return Err(Error::Engine(
            "the CUDA headers (cuda_bf16.h) were not found: set INFIRE_CUDA_INCLUDE or \
             CUDA_HOME, or `pip install nvidia-cuda-runtime==13.0.*`"
                .into(),
        ));
    }
    Ok(found.into_iter().take(1).collect())
}

/// NVRTC options for `spec`, in a fixed order (they are part of the cache key).
fn options(spec: &KernelSpec, includes: &[PathBuf]) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={}", spec.arch),
        "-std=c++17".to_string(),
        "-default-device".to_string(),
        format!("-D{}", spec.dtype.define()),
    ];
    for (k, v) in &spec.defines {
        opts.push(match v {
            Some(v) => format!("-D{k}={v}"),
            None => format!("-D{k}"),
        });
    }
    opts.extend(includes.iter().map(|d| format!("-I{}", d.display())));
    opts
}

/// Compiles `spec` to `target`, through the disk cache when `cache_dir` is given.
pub fn compile(spec: &KernelSpec, target: Target, cache_dir: Option<&Path>) -> Result<Vec<u8>> {
    let src = source(&spec.name)?;
    let (major, minor) = nvrtc_version()?;
    let includes = include_dirs()?;
    let opts = options(spec, &includes);
    let ext = match target {
        Target::Cubin => "cubin",
        Target::Ptx => "ptx",
    };
    // Include paths are left out of the key: the same headers in another place are the same.
    let key_opts: Vec<&String> = opts.iter().filter(|o| !o.starts_with("-I")).collect();
    let key = fnv1a64(format!("{src}\0{key_opts:?}\0nvrtc {major}.{minor}\0{ext}").as_bytes());
    let cache_path =
        cache_dir.map(|d| d.join(format!("{}-{}-{key:016x}.{ext}", spec.name, spec.arch)));
    if let Some(p) = &cache_path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let bytes = nvrtc_compile(&spec.name, &src, &opts, target)?;
    if let Some(p) = &cache_path {
        // A cache that cannot be written only costs a compile next time.
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = p.with_extension(format!("{ext}.tmp{}", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok(bytes)
}

/// One NVRTC compilation; the program log is part of the error on failure.
fn nvrtc_compile(name: &str, src: &str, opts: &[String], target: Target) -> Result<Vec<u8>> {
    let c_src = CString::new(src).map_err(|_| Error::Engine("kernel source has a NUL".into()))?;
    let c_name = CString::new(format!("{name}.cu")).expect("kernel names have no NUL");
    let prog = nvrtc::create_program(&c_src, Some(&c_name))
        .map_err(|e| Error::Engine(format!("nvrtcCreateProgram({name}): {e:?}")))?;
    // SAFETY: `prog` was created above and is destroyed once, below.
    let out = unsafe {
        let compiled = nvrtc::compile_program(prog, opts);
        let log = nvrtc::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(Error::Engine(format!(
                "NVRTC failed to compile kernel {name} ({e:?}) with {opts:?}:\n{log}"
            ))),
            Ok(()) => match target {
                Target::Ptx => nvrtc::get_ptx(prog)
                    .map(|p| c_chars_to_string(&p).into_bytes())
                    .map_err(|e| Error::Engine(format!("nvrtcGetPTX({name}): {e:?}"))),
                Target::Cubin => get_cubin(prog)
                    .map_err(|e| Error::Engine(format!("nvrtcGetCUBIN({name}): {e:?}"))),
            },
        }
    };
    // SAFETY: created above, not yet destroyed.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a live, compiled program.
unsafe fn get_cubin(
    prog: nvrtc_sys::nvrtcProgram,
) -> std::result::Result<Vec<u8>, nvrtc::NvrtcError> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
    let mut buf = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char).result()?;
    Ok(buf)
}

fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        // `c_char` is i8 on x86-64 and u8 on aarch64: its byte either way.
        .map(|&c| c.to_ne_bytes()[0])
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// 64-bit FNV-1a: a stable hash for cache file names (std's hasher may change between
/// compiler versions).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_known_and_prefixed_with_common() {
        for name in names() {
            let src = source(name).unwrap();
            assert!(src.starts_with(COMMON));
            assert!(src.contains("extern \"C\""), "{name} defines no kernel");
        }
        assert!(source("nope").is_err());
    }

    #[test]
    fn hopper_gets_the_arch_specific_target() {
        assert_eq!(arch_for(9, 0), "sm_90a");
        assert_eq!(arch_for(8, 0), "sm_80");
        assert_eq!(arch_for(8, 9), "sm_89");
    }

    #[test]
    fn the_fp8_mma_gemv_compiles_from_sm_89_on() {
        for arch in ["sm_89", "sm_90a", "sm_100", "sm_120a"] {
            assert!(compiles_for("gemv_fp8_mma", arch), "{arch}");
        }
        for arch in ["sm_80", "sm_86", "sm_87"] {
            assert!(!compiles_for("gemv_fp8_mma", arch), "{arch}");
            assert!(compiles_for("gemv", arch), "{arch}");
        }
        assert!(MIN_CAPABILITY.iter().all(|(n, _)| names().contains(n)));
    }

    #[test]
    fn options_are_ordered_and_keyed_without_includes() {
        let spec = KernelSpec {
            name: "silu_mul".into(),
            arch: "sm_80".into(),
            dtype: KernelDtype::F16,
            defines: vec![("HEAD_DIM".into(), Some("128".into())), ("X".into(), None)],
        };
        let opts = options(&spec, &[PathBuf::from("/inc")]);
        assert_eq!(
            opts,
            [
                "--gpu-architecture=sm_80",
                "-std=c++17",
                "-default-device",
                "-DINFIRE_DTYPE_F16",
                "-DHEAD_DIM=128",
                "-DX",
                "-I/inc"
            ]
        );
    }
}
