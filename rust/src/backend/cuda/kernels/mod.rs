//! The compiled kernels of one model and their launch wrappers.
//!
//! Each wrapper states the grid and block shape its kernel was written for (see the header
//! comment of each file in `kernels/cuda/`); the argument order matches the kernel signature.
//! Compilation in the background is `compile.rs`; the GEMV family (`gemv.cu`, and
//! `gemv_fp8_mma.cu` on sm_89+) `gemv.rs`; the attention kernels `attention.rs`; the FP8
//! kernels around the GEMMs of FP8 matrices (`fp8.cu`, `fp8_fused.cu`) `fp8.rs`.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use super::device_mem::cuda_err;
use super::step_meta::StepMeta;
use crate::backend::AttentionShape;
use crate::error::{Error, Result};

pub use self::compile::KernelSet;
pub use self::gemv::{
    fp8_mma_fits, Fp8Layout, GemvArgs, GemvInput, GemvOutput, FP8_MMA_MAX_ROWS, GEMV_MAX_ROWS,
};
use self::gemv::{
    gemv_fp8_mma_name, gemv_fp8_v2_name, gemv_name, Fp8OneRow, GemvKernel, GEMV_VARIANTS,
};

/// The loaded kernel functions.
pub struct Kernels {
    embedding: CudaFunction,
    rms_norm: CudaFunction,
    add_rms_norm: CudaFunction,
    qk_norm: CudaFunction,
    rope_cache_write: CudaFunction,
    silu_mul: CudaFunction,
    gather_rows: CudaFunction,
    argmax: CudaFunction,
    sample: CudaFunction,
    decode_attention: CudaFunction,
    attention_combine: CudaFunction,
    prefill_attention: CudaFunction,
    /// The entry points of `GEMV_VARIANTS`, in its order, for bf16/f16 and for FP8 weights.
    gemv: Vec<GemvKernel>,
    gemv_fp8: Vec<GemvKernel>,
    /// The tensor-core FP8 GEMV's entry points, in the same order, where the GPU has them
    /// (sm_89+, `jit::compiles_for`).
    gemv_fp8_mma: Option<Vec<GemvKernel>>,
    /// Which FP8 GEMV one-row steps run where both take the matrix.
    fp8_one_row: Fp8OneRow,
    /// `gemv_fp8.cu`'s entry points, in the same order, loaded where [`Fp8OneRow::V2`] asks for
    /// them (every one-row FP8 projection then runs on them).
    gemv_fp8_v2: Option<Vec<GemvKernel>>,
    fp8_quantize_rows: CudaFunction,
    fp8_dequantize: CudaFunction,
    fp8_scale_out: CudaFunction,
    /// `fp8_fused.cu`: the norms writing FP8 codes, and the gate/up scales with silu·mul.
    rms_norm_fp8: CudaFunction,
    add_rms_norm_fp8: CudaFunction,
    fp8_scale_silu_mul: CudaFunction,
    /// Whether launches use programmatic dependent launch (Hopper and later).
    pdl: bool,
}

/// Launches `func` on `stream`: `grid` CTAs of `block` threads, `params` the addresses of the
/// arguments in the order of the kernel's signature. With `pdl`, under programmatic dependent
/// launch: the kernel may start before the one ahead of it has finished, which every kernel in
/// kernels/cuda/ allows for by calling `pdl_begin()` (common.cuh) before it touches memory an
/// earlier kernel writes or reads.
///
/// # Safety
/// `params` match the kernel's signature in number, order and C types, and every buffer they
/// point to is sized for the grid.
unsafe fn launch_raw(
    pdl: bool,
    stream: &CudaStream,
    func: &CudaFunction,
    grid: (usize, usize, usize),
    block: u32,
    params: &mut [*mut c_void],
) -> Result<()> {
    stream.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: plain-old-data, every field set below or meaningful as zero.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: grid.0 as u32,
        gridDimY: grid.1 as u32,
        gridDimZ: grid.2 as u32,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: 0,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(pdl),
    };
    // SAFETY: the caller's contract; `config` and `attr` outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(cuda_err)
}

/// The C types kernel parameters have here: `int`, `float`, and pointers as `u64` device
/// addresses. Anything else (a `usize`, a Rust reference) fails to compile instead of passing
/// the wrong number of bytes.
trait KernelParam {}
impl KernelParam for i32 {}
impl KernelParam for f32 {}
impl KernelParam for u64 {}

/// The address of a kernel argument, as `cuLaunchKernelEx` takes it.
fn param<T: KernelParam>(x: &T) -> *mut c_void {
    x as *const T as *mut c_void
}

/// Launches kernel `func` on `stream` for the [`Kernels`] `k`: `grid` CTAs of `block` threads,
/// the arguments (locals, passed by address) in the order of the kernel's signature.
macro_rules! launch {
    ($k:expr, $stream:expr, $func:expr, $grid:expr, $block:expr; $($arg:ident),+ $(,)?) => {{
        let mut params = [$( param(&$arg) ),+];
        // SAFETY: every caller passes the arguments in the order and with the C types of the
        // kernel's signature (see its file in kernels/cuda/), and buffers sized for the grid.
        unsafe { launch_raw($k.pdl, $stream, $func, $grid, $block, &mut params) }
    }};
}

mod attention;
mod compile;
mod fp8;
mod gemv;

impl Kernels {
    fn load(ctx: &Arc<CudaContext>, cubins: Vec<(String, Vec<u8>)>, pdl: bool) -> Result<Kernels> {
        let mut modules = std::collections::HashMap::new();
        for (file, cubin) in cubins {
            let module = ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(|e| Error::Engine(format!("loading kernel module {file}: {e:?}")))?;
            modules.insert(file, module);
        }
        let f = |file: &str, func: &str| -> Result<CudaFunction> {
            modules
                .get(file)
                .ok_or_else(|| Error::Engine(format!("kernel file {file} was not compiled")))?
                .load_function(func)
                .map_err(|e| Error::Engine(format!("kernel {func} in {file}: {e:?}")))
        };
        let gemv_of = |fp8: bool| {
            GEMV_VARIANTS
                .iter()
                .map(|&(i, o)| GemvKernel::new(f("gemv", &gemv_name(i, o, fp8))?))
                .collect::<Result<Vec<_>>>()
        };
        let (gemv, gemv_fp8) = (gemv_of(false)?, gemv_of(true)?);
        // Compiled where the GPU has its conversion instruction (`jit::compiles_for`).
        let gemv_fp8_mma = modules
            .contains_key("gemv_fp8_mma")
            .then(|| {
                GEMV_VARIANTS
                    .iter()
                    .map(|&(i, o)| GemvKernel::new(f("gemv_fp8_mma", &gemv_fp8_mma_name(i, o))?))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        let fp8_one_row = Fp8OneRow::from_env();
        let gemv_fp8_v2 = (fp8_one_row == Fp8OneRow::V2)
            .then(|| {
                GEMV_VARIANTS
                    .iter()
                    .map(|&(i, o)| GemvKernel::new(f("gemv_fp8", &gemv_fp8_v2_name(i, o))?))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        // Programmatic dependent launch needs sm_90.
        let (major, _) = ctx.compute_capability().map_err(cuda_err)?;
        let pdl = pdl && major >= 9;
        Ok(Kernels {
            pdl,
            gemv,
            gemv_fp8,
            gemv_fp8_mma,
            fp8_one_row,
            gemv_fp8_v2,
            fp8_quantize_rows: f("fp8", "fp8_quantize_rows")?,
            fp8_dequantize: f("fp8", "fp8_dequantize")?,
            fp8_scale_out: f("fp8", "fp8_scale_out")?,
            rms_norm_fp8: f("fp8_fused", "rms_norm_fp8")?,
            add_rms_norm_fp8: f("fp8_fused", "add_rms_norm_fp8")?,
            fp8_scale_silu_mul: f("fp8_fused", "fp8_scale_silu_mul")?,
            embedding: f("embedding", "embedding")?,
            rms_norm: f("rms_norm", "rms_norm")?,
            add_rms_norm: f("rms_norm", "add_rms_norm")?,
            qk_norm: f("qk_norm", "qk_norm")?,
            rope_cache_write: f("rope_cache_write", "rope_cache_write")?,
            silu_mul: f("silu_mul", "silu_mul")?,
            gather_rows: f("gather_rows", "gather_rows")?,
            argmax: f("sampling", "argmax")?,
            sample: f("sampling", "sample")?,
            decode_attention: f("decode_attention", "decode_attention")?,
            attention_combine: f("decode_attention", "attention_combine")?,
            prefill_attention: f("prefill_attention", "prefill_attention")?,
        })
    }

    pub fn embedding(
        &self,
        stream: &Arc<CudaStream>,
        table: u64,
        ids: u64,
        out: u64,
        rows: usize,
        hidden: usize,
    ) -> Result<()> {
        let hidden = hidden as i32;
        launch!(self, stream, &self.embedding, (rows, 1, 1), 128; table, ids, out, hidden)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        stream: &Arc<CudaStream>,
        x: u64,
        w: u64,
        out: u64,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let hidden = hidden as i32;
        launch!(self, stream, &self.rms_norm, (rows, 1, 1), 256; x, w, out, hidden, eps)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        stream: &Arc<CudaStream>,
        residual: u64,
        x: u64,
        w: u64,
        out: u64,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let hidden = hidden as i32;
        let f = &self.add_rms_norm;
        launch!(self, stream, f, (rows, 1, 1), 256; residual, x, w, out, hidden, eps)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn qk_norm(
        &self,
        stream: &Arc<CudaStream>,
        qkv: u64,
        q_w: u64,
        k_w: u64,
        rows: usize,
        shape: AttentionShape,
        eps: f32,
    ) -> Result<()> {
        let width = shape.qkv_width() as i32;
        let heads = shape.num_heads + shape.num_kv_heads;
        launch!(self, stream, &self.qk_norm, (rows, heads, 1), 32; qkv, q_w, k_w, width, eps)
    }

    /// RoPE on q and k of every row and the cache write of k and v; every slot lies inside
    /// the cache (the block manager's invariant) or is -1 (padding, skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_cache_write(
        &self,
        stream: &Arc<CudaStream>,
        qkv: u64,
        meta: &StepMeta,
        inv_freq: u64,
        k_cache: u64,
        v_cache: u64,
        [k_scale, v_scale]: [f32; 2],
        shape: AttentionShape,
    ) -> Result<()> {
        let width = shape.qkv_width() as i32;
        let (positions, slots) = (meta.positions(), meta.slots());
        launch!(self, stream, &self.rope_cache_write, (meta.rows, 1, 1), 128;
            qkv, positions, slots, inv_freq, k_cache, v_cache, width, k_scale, v_scale)
    }

    pub fn silu_mul(
        &self,
        stream: &Arc<CudaStream>,
        x: u64,
        out: u64,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let n32 = n as i32;
        launch!(self, stream, &self.silu_mul, (n.div_ceil(8 * 256), rows, 1), 256; x, out, n32)
    }

    pub fn gather_rows(
        &self,
        stream: &Arc<CudaStream>,
        x: u64,
        rows_ptr: u64,
        out: u64,
        n: usize,
        width: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let width = width as i32;
        launch!(self, stream, &self.gather_rows, (n, 1, 1), 128; x, rows_ptr, out, width)
    }

    /// `out[r] = argmax(logits[r])` over `vocab` f32 logits per row, as `i32`.
    pub fn argmax(
        &self,
        stream: &Arc<CudaStream>,
        logits: u64,
        rows: usize,
        vocab: usize,
        out: u64,
    ) -> Result<()> {
        let vocab = vocab as i32;
        launch!(self, stream, &self.argmax, (rows, 1, 1), 1024; logits, vocab, out)
    }

    /// Sampled tokens of `rows` rows of f32 logits, masks and penalties applied to the logits
    /// in place: `params` holds [`SAMPLE_PARAM_WORDS`] words per row, `penalty_tokens` the
    /// rows' entries, `masks` the rows' token masks (each row names its own offset).
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        stream: &Arc<CudaStream>,
        logits: u64,
        rows: usize,
        vocab: usize,
        params: u64,
        penalty_tokens: u64,
        masks: u64,
        out: u64,
    ) -> Result<()> {
        let vocab = vocab as i32;
        launch!(self, stream, &self.sample, (rows, 1, 1), 1024;
            logits, vocab, params, penalty_tokens, masks, out)
    }
}
