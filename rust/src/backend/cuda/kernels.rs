//! The compiled kernels of one model and their launch wrappers.
//!
//! Each wrapper states the grid and block shape its kernel was written for (see the header
//! comment of each file in `kernels/cuda/`); the argument order matches the kernel signature.

use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use cudarc::driver::{sys, CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;
use rayon::prelude::*;

use super::device_mem::cuda_err;
use super::jit::{self, KernelDtype, KernelSpec, Target};
use super::step_meta::StepMeta;
use crate::backend::AttentionShape;
use crate::error::{Error, Result};
use crate::sampling::StepSampling;

/// One-warp decode attention CTAs an SM holds at once (26 KiB of shared memory each for
/// head_dim 128; see `kernels/cuda/decode_attention.cu`).
const DECODE_CTAS_PER_SM: usize = 8;
/// Fewest keys a split of decode attention gets when a step's rows alone would leave the GPU
/// idle: below this the combine costs more than the split saves (16 lost 13 % of one-row
/// decode against 64; 32 gained 1–3 % once the K/V loads moved before the kernel's wait,
/// kernels/cuda/NOTES.md).
pub const MIN_KEYS_PER_SPLIT: usize = 32;
/// Fewest keys a split gets in a large batch (rows × kv heads fill the GPU) of uneven rows.
/// Splits there only even out rows of different lengths — unsplit, the CTAs of the longest
/// rows run on alone at the end of the launch — so they are longer, and rows of a few hundred
/// keys are not split at all.
const BATCH_MIN_KEYS_PER_SPLIT: usize = 256;
/// A large batch whose longest row has at most this many times the mean length (×4) is even:
/// its rows are not split (each split adds its partial results and the combine pass: 7 % of
/// the attention time of 256 rows of 1,024 keys, `bench/attention_bench.py`).
const EVEN_ROWS_MAX_OVER_MEAN_X4: usize = 5;
/// `min_split_keys` that splits no row.
const NO_SPLIT_KEYS: usize = 1 << 24;
/// Splits launched for a large batch (`INFIRE_DECODE_BATCH_SPLITS` overrides it; 1: none):
/// rows of up to 4 × 256 keys are cut into pieces of at most 256.
pub const DEFAULT_BATCH_SPLITS: usize = 4;
/// Threads of a GEMV CTA (`GEMV_THREADS` in gemv.cu).
const GEMV_THREADS: u32 = 256;

/// Most rows a step may have for its projections to run as GEMVs (`kernels/cuda/gemv.cu`)
/// rather than cuBLASLt GEMMs, and the row count the GEMV entry points are compiled for
/// (`_m1`): one (at 2-8 rows the GEMV lost to cuBLASLt; NOTES.md).
pub const GEMV_MAX_ROWS: usize = 1;
/// Output columns a GEMV CTA takes at a time (`GROUP` in gemv.cu): its columns per CTA are a
/// multiple of this.
const GEMV_GROUP: usize = 4;

/// How a GEMV reads its input (see `kernels/cuda/gemv.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvInput {
    /// As is.
    Plain,
    /// RMS-normalized and scaled by a norm weight.
    Norm,
}

/// What a GEMV does with its sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvOutput {
    /// Rounded to the activation dtype (plus the bias, if any).
    Store,
    /// As f32 (plus the bias, if any): logits.
    F32,
    /// Rounded and added into the output (the residual stream).
    Add,
    /// `silu(gate) * up` of the two halves of a fused gate/up matrix (`n / 2` outputs).
    Silu,
}

/// The GEMV entry points gemv.cu defines, in the order of [`Kernels::gemv`].
const GEMV_VARIANTS: [(GemvInput, GemvOutput); 6] = [
    (GemvInput::Plain, GemvOutput::Store),
    (GemvInput::Plain, GemvOutput::F32),
    (GemvInput::Plain, GemvOutput::Add),
    (GemvInput::Norm, GemvOutput::Store),
    (GemvInput::Norm, GemvOutput::F32),
    (GemvInput::Norm, GemvOutput::Silu),
];

fn gemv_name(input: GemvInput, output: GemvOutput) -> String {
    let i = match input {
        GemvInput::Plain => "plain",
        GemvInput::Norm => "norm",
    };
    let o = match output {
        GemvOutput::Store => "store",
        GemvOutput::F32 => "f32",
        GemvOutput::Add => "add",
        GemvOutput::Silu => "silu",
    };
    format!("gemv_{i}_{o}_m{GEMV_MAX_ROWS}")
}

/// Columns per CTA of an `n`-column GEMV: a multiple of [`GEMV_GROUP`], as few as let the
/// whole grid be resident at once (`ctas_per_sm` on each of `sm_count` SMs), so that it runs
/// in one wave with every CTA streaming the same number of weight bytes.
fn gemv_cols_per_cta(n: usize, sm_count: usize, ctas_per_sm: usize) -> usize {
    GEMV_GROUP * n.div_ceil(GEMV_GROUP * sm_count * ctas_per_sm).max(1)
}

/// A GEMV entry point and how many of its CTAs an SM holds.
struct GemvKernel {
    func: CudaFunction,
    ctas_per_sm: usize,
}

impl GemvKernel {
    fn new(func: CudaFunction) -> Result<GemvKernel> {
        let ctas_per_sm = func
            .occupancy_max_active_blocks_per_multiprocessor(GEMV_THREADS, 0, None)
            .map_err(cuda_err)?
            .max(1) as usize;
        Ok(GemvKernel { func, ctas_per_sm })
    }

    /// Grid and columns per CTA for the launch `a`: as many CTAs as the GPU holds at once.
    fn grid(&self, a: &GemvArgs, sm_count: usize) -> ((usize, usize, usize), i32) {
        let cols = gemv_cols_per_cta(a.n, sm_count, self.ctas_per_sm);
        ((a.n.div_ceil(cols), 1, 1), cols as i32)
    }
}

/// The arguments of one GEMV launch (device addresses; 0 for an absent norm weight or bias).
pub struct GemvArgs {
    pub input: GemvInput,
    pub output: GemvOutput,
    pub rows: usize,
    /// `[n, k]` weight.
    pub w: u64,
    pub n: usize,
    pub k: usize,
    pub x: u64,
    pub norm_w: u64,
    pub bias: u64,
    pub out: u64,
    pub eps: f32,
}

/// Scratch of split-KV decode attention: per (row, split) one partial output and one
/// log-sum-exp per query head, f32.
pub struct SplitBuffers {
    pub partial_out: u64,
    pub partial_lse: u64,
    /// Most `rows × splits` the buffers hold.
    pub rows_times_splits: usize,
    /// Longest context the step's block tables can hold (their width × block size): the
    /// split count depends on it rather than on the exact lengths, so that it repeats from
    /// step to step (a captured graph keeps its grid).
    pub max_context: usize,
    /// The GPU's streaming multiprocessors.
    pub sm_count: usize,
    /// Splits launched when the rows fill the GPU ([`DEFAULT_BATCH_SPLITS`]).
    pub batch_splits: usize,
    /// Fewest keys per split of a few rows ([`MIN_KEYS_PER_SPLIT`]).
    pub min_keys: usize,
}

/// How decode attention splits the keys of a step's rows: `splits` CTAs are launched per (row,
/// kv head), and a row of `len` keys uses `clamp(ceil(len / min_keys), 1, splits)` of them
/// (`used_splits` in decode_attention.cu), where the step's `min_keys` is
/// [`step_min_split_keys`] of this rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplits {
    pub splits: usize,
    pub min_keys: usize,
    /// The large-batch rule: rows of about equal length are not split.
    pub batch: bool,
}

/// The fewest keys per split of a step whose decode rows have context lengths `lens` (padding
/// rows, of length 0, left out) under `rule`: `rule.min_keys`, or [`NO_SPLIT_KEYS`] for a
/// large batch of even rows (none longer than 5/4 of the mean). Uploaded with the step, so that
/// one captured graph serves both.
pub fn step_min_split_keys(rule: DecodeSplits, lens: impl Iterator<Item = usize>) -> usize {
    if !rule.batch || rule.splits == 1 {
        return rule.min_keys;
    }
    let (mut n, mut sum, mut max) = (0usize, 0usize, 0usize);
    for len in lens.filter(|&l| l > 0) {
        n += 1;
        sum += len;
        max = max.max(len);
    }
    // max > 5/4 × mean  ⇔  4 × n × max > 5 × sum
    if 4 * n * max > EVEN_ROWS_MAX_OVER_MEAN_X4 * sum {
        rule.min_keys
    } else {
        NO_SPLIT_KEYS
    }
}

/// How decode attention splits the keys of this step's rows, within the scratch buffers.
///
/// - Few rows (fewer (row, kv head) CTAs than half of what the GPU holds at once): as many
///   splits as fill the GPU — never more, so that equal rows finish in one wave rather than
///   leaving a tail — with no split shorter than [`MIN_KEYS_PER_SPLIT`] at the longest context
///   the block tables hold.
/// - A large batch: a fixed [`SplitBuffers::batch_splits`] with splits of at least
///   [`BATCH_MIN_KEYS_PER_SPLIT`] keys when the rows' lengths are uneven (none when they are
///   even: [`step_min_split_keys`]), so that a long row runs as several CTAs beside the short
///   ones. Fixed, so that a decode graph of these rows serves every context length.
pub fn decode_splits(rows: usize, shape: AttentionShape, buf: &SplitBuffers) -> DecodeSplits {
    let ctas = rows * shape.num_kv_heads * decode_head_tiles(shape);
    let resident = buf.sm_count * DECODE_CTAS_PER_SM;
    let by_buffer = buf.rows_times_splits / rows.max(1);
    if ctas > 0 && 2 * ctas > resident {
        return DecodeSplits {
            splits: buf.batch_splits.min(by_buffer).max(1),
            min_keys: BATCH_MIN_KEYS_PER_SPLIT,
            batch: true,
        };
    }
    let by_gpu = resident.checked_div(ctas).unwrap_or(1);
    let by_keys = buf.max_context.div_ceil(buf.min_keys.max(1));
    DecodeSplits {
        splits: by_gpu.min(by_keys).min(by_buffer).max(1),
        min_keys: buf.min_keys.max(1),
        batch: false,
    }
}

/// The scalar arguments both attention kernels take: the qkv row width and the softmax scale
/// 1/√head_dim.
fn attention_args(shape: AttentionShape) -> (i32, f32) {
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    (shape.qkv_width() as i32, scale)
}

/// CTAs per (row, kv head) of decode attention: one per 16 query heads of the GQA group.
fn decode_head_tiles(shape: AttentionShape) -> usize {
    (shape.num_heads / shape.num_kv_heads).div_ceil(16)
}

type Compiled = std::result::Result<Vec<(String, Vec<u8>)>, String>;

/// Kernels being compiled on a background thread, loaded into the context on first use.
pub struct KernelSet {
    pending: Mutex<Option<JoinHandle<Compiled>>>,
    loaded: OnceLock<std::result::Result<Kernels, String>>,
    /// Whether to launch with programmatic dependent launch (where the GPU has it).
    pdl: bool,
}

impl KernelSet {
    /// Starts compiling every kernel file for `arch`, specialized for `shape` and
    /// `block_size` (and `extra_defines`, `Tuning::kernel_defines`), in parallel; with `pdl`
    /// they launch under programmatic dependent launch where the GPU has it.
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
    /// The entry points of `GEMV_VARIANTS`, in its order.
    gemv: Vec<GemvKernel>,
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
        let gemv = GEMV_VARIANTS
            .iter()
            .map(|&(input, output)| GemvKernel::new(f("gemv", &gemv_name(input, output))?))
            .collect::<Result<Vec<_>>>()?;
        // Programmatic dependent launch needs sm_90.
        let (major, _) = ctx.compute_capability().map_err(cuda_err)?;
        let pdl = pdl && major >= 9;
        Ok(Kernels {
            pdl,
            gemv,
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
        shape: AttentionShape,
    ) -> Result<()> {
        let width = shape.qkv_width() as i32;
        let (positions, slots) = (meta.positions(), meta.slots());
        launch!(self, stream, &self.rope_cache_write, (meta.rows, 1, 1), 128;
            qkv, positions, slots, inv_freq, k_cache, v_cache, width)
    }

    /// Attention of every row of the step. A decode-only step runs the decode kernel over all
    /// rows (split over the keys when the rows leave SMs idle); a step with multi-token
    /// queries runs the prefill kernel over their 64-row tiles and the decode kernel over the
    /// one-token sequences' rows. Both on tensor cores. Block tables cover every position (the
    /// batch's invariant).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        stream: &Arc<CudaStream>,
        qkv: u64,
        k_cache: u64,
        v_cache: u64,
        out: u64,
        meta: &StepMeta,
        shape: AttentionShape,
        split_buf: &SplitBuffers,
    ) -> Result<()> {
        let caches = (k_cache, v_cache);
        if meta.max_query_len <= 1 {
            return self.decode_attention(stream, qkv, caches, out, meta, shape, split_buf, None);
        }
        if meta.num_prefill_tiles > 0 {
            let (width, scale) = attention_args(shape);
            let max_blocks = meta.max_blocks as i32;
            let (tables, tiles) = (meta.block_tables(), meta.prefill_tiles());
            let (q_start, q_len, ctx_len) = (
                meta.seq_query_start(),
                meta.seq_query_len(),
                meta.seq_context_len(),
            );
            let grid = (meta.num_prefill_tiles, shape.num_heads, 1);
            launch!(self, stream, &self.prefill_attention, grid, 128;
                qkv, k_cache, v_cache, out, q_start, q_len, ctx_len, tables, max_blocks, width,
                scale, tiles)?;
        }
        if meta.num_decode_rows > 0 {
            let rows = Some((meta.decode_rows(), meta.num_decode_rows));
            self.decode_attention(stream, qkv, caches, out, meta, shape, split_buf, rows)?;
        }
        Ok(())
    }

    /// Decode attention (and its combine pass when split) over every row of the step, or over
    /// the `n` rows listed at device address `list` when `rows` is `Some((list, n))`.
    #[allow(clippy::too_many_arguments)]
    fn decode_attention(
        &self,
        stream: &Arc<CudaStream>,
        qkv: u64,
        (k_cache, v_cache): (u64, u64),
        out: u64,
        meta: &StepMeta,
        shape: AttentionShape,
        split_buf: &SplitBuffers,
        rows: Option<(u64, usize)>,
    ) -> Result<()> {
        let (row_list, n) = rows.unwrap_or((0, meta.rows));
        let (width, scale) = attention_args(shape);
        let (tables, table_width) = (meta.block_tables(), meta.table_width());
        let (row_seq, row_pos) = (meta.row_seq(), meta.positions());
        let splits = decode_splits(n, shape, split_buf).splits;
        let (splits32, min_keys) = (splits as i32, meta.min_split_keys());
        let (p_out, p_lse) = (split_buf.partial_out, split_buf.partial_lse);
        let grid = (n, shape.num_kv_heads * decode_head_tiles(shape), splits);
        launch!(self, stream, &self.decode_attention, grid, 32;
            qkv, k_cache, v_cache, out, row_seq, row_pos, tables, table_width, width, scale,
            p_out, p_lse, splits32, min_keys, row_list)?;
        if splits == 1 {
            return Ok(());
        }
        let grid = (n, shape.num_heads, 1);
        let f = &self.attention_combine;
        launch!(self, stream, f, grid, shape.head_dim as u32;
            p_out, p_lse, out, splits32, min_keys, row_list, row_pos)
    }

    /// One projection of at most [`GEMV_MAX_ROWS`] rows on the GEMV kernels; `a.k` is a
    /// multiple of 8 (16-byte vectors) and the buffers hold `a.rows` rows.
    pub fn gemv(&self, stream: &Arc<CudaStream>, a: &GemvArgs, sm_count: usize) -> Result<()> {
        let variant = GEMV_VARIANTS
            .iter()
            .position(|&v| v == (a.input, a.output))
            .expect("every (input, output) pair the backend asks for is compiled");
        if a.rows > GEMV_MAX_ROWS {
            return Err(Error::Engine(format!("GEMV of {} rows", a.rows)));
        }
        let kernel = &self.gemv[variant];
        let (grid, cols) = kernel.grid(a, sm_count);
        let (w, x, norm_w, bias, out, eps) = (a.w, a.x, a.norm_w, a.bias, a.out, a.eps);
        let (rows, n, k) = (a.rows as i32, a.n as i32, a.k as i32);
        launch!(self, stream, &kernel.func, grid, GEMV_THREADS;
            w, x, norm_w, bias, out, rows, n, k, cols, eps)
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

    /// Sampled tokens of `rows` rows of f32 logits, penalties applied to the logits in place:
    /// `params` holds [`SAMPLE_PARAM_WORDS`] words per row, `penalty_tokens` the rows' entries.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        stream: &Arc<CudaStream>,
        logits: u64,
        rows: usize,
        vocab: usize,
        params: u64,
        penalty_tokens: u64,
        out: u64,
    ) -> Result<()> {
        let vocab = vocab as i32;
        launch!(self, stream, &self.sample, (rows, 1, 1), 1024;
            logits, vocab, params, penalty_tokens, out)
    }
}

/// 32-bit words per row of the `sample` kernel's parameters (`SampleParam` in sampling.cu).
const SAMPLE_PARAM_WORDS: usize = 12;
/// Marks a penalty entry's token as seen in the prompt or output (`SEEN_BIT` in sampling.cu).
const SEEN_BIT: u32 = 1 << 31;

/// Packs a step's sampling as the `sample` kernel reads it: [`SAMPLE_PARAM_WORDS`] words per
/// row (floats as their bits, in the order of sampling.cu's `SampleParam`), then two words
/// (token, output count | [`SEEN_BIT`]) per penalty entry. Returns the offset, in words, of
/// the entries.
pub fn pack_sampling(s: &StepSampling, out: &mut Vec<u32>) -> usize {
    out.clear();
    for r in &s.rows {
        let words: [u32; SAMPLE_PARAM_WORDS] = [
            r.temperature.to_bits(),
            r.top_p.to_bits(),
            r.min_p.to_bits(),
            r.top_k as u32,
            r.repetition_penalty.to_bits(),
            r.presence_penalty.to_bits(),
            r.frequency_penalty.to_bits(),
            r.penalties.0,
            r.penalties.1,
            r.key as u32,
            (r.key >> 32) as u32,
            0,
        ];
        out.extend(words);
    }
    let entries = out.len();
    for t in &s.penalty_tokens {
        let seen = if t.seen { SEEN_BIT } else { 0 };
        out.extend([t.token, t.output_count.min(SEEN_BIT - 1) | seen]);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_layout_matches_sampling_cu() {
        let src = include_str!("../../../../kernels/cuda/sampling.cu");
        assert!(src.contains(&format!("SAMPLE_PARAM_WORDS = {SAMPLE_PARAM_WORDS},")));
        assert!(src.contains(&format!("SEEN_BIT = {SEEN_BIT:#x}u;")));
        let step = StepSampling {
            rows: vec![crate::sampling::RowSampling {
                key: 0x1234_5678_9abc_def0,
                penalties: (0, 1),
                ..crate::sampling::RowSampling::GREEDY
            }],
            penalty_tokens: vec![crate::sampling::PenaltyToken {
                token: 7,
                output_count: 3,
                seen: true,
            }],
        };
        let mut out = Vec::new();
        assert_eq!(pack_sampling(&step, &mut out), SAMPLE_PARAM_WORDS);
        assert_eq!(out[9..11], [0x9abc_def0, 0x1234_5678]);
        assert_eq!(out[SAMPLE_PARAM_WORDS..], [7, 3 | SEEN_BIT]);
    }

    fn buf(max_context: usize) -> SplitBuffers {
        SplitBuffers {
            partial_out: 0,
            partial_lse: 0,
            rows_times_splits: 1024,
            max_context,
            sm_count: 132,
            batch_splits: DEFAULT_BATCH_SPLITS,
            min_keys: MIN_KEYS_PER_SPLIT,
        }
    }

    #[test]
    fn gemv_entry_points_are_named_as_gemv_cu_defines_them() {
        let names: Vec<_> = GEMV_VARIANTS
            .iter()
            .map(|&(i, o)| gemv_name(i, o))
            .collect();
        assert_eq!(
            names,
            [
                "gemv_plain_store_m1",
                "gemv_plain_f32_m1",
                "gemv_plain_add_m1",
                "gemv_norm_store_m1",
                "gemv_norm_f32_m1",
                "gemv_norm_silu_m1",
            ]
        );
        let source = crate::backend::cuda::jit::source("gemv").unwrap();
        for name in &names {
            let (stem, _) = name.rsplit_once("_m").unwrap();
            assert!(source.contains(&format!("GEMV_ENTRY({stem},")), "{name}");
        }
    }

    fn splits(rows: usize, shape: AttentionShape, buf: &SplitBuffers) -> usize {
        decode_splits(rows, shape, buf).splits
    }

    #[test]
    fn gemv_grids_fit_the_gpu_in_one_wave() {
        // 132 SMs x 4 CTAs = 528 resident CTAs.
        for n in [37, 4096, 6144, 28672, 128256] {
            let cols = gemv_cols_per_cta(n, 132, 4);
            assert_eq!(cols % GEMV_GROUP, 0);
            assert!(
                n.div_ceil(cols) <= 528,
                "n = {n}: {} CTAs",
                n.div_ceil(cols)
            );
            // And no fewer columns per CTA would do.
            assert!(cols == GEMV_GROUP || n.div_ceil(cols - GEMV_GROUP) > 528);
        }
        assert_eq!(gemv_cols_per_cta(4096, 132, 4), 8);
        assert_eq!(gemv_cols_per_cta(37, 132, 4), 4);
    }

    #[test]
    fn decode_splits_fill_the_gpu_only_when_rows_leave_it_idle() {
        let shape = AttentionShape {
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
        };
        // 132 SMs hold 1056 CTAs. One row, long context: 1056 / 8 = 132 splits.
        assert_eq!(splits(1, shape, &buf(1 << 16)), 132);
        // Short context: no split shorter than 32 keys.
        assert_eq!(splits(1, shape, &buf(128)), 4);
        // Never more CTAs than the GPU holds at once: 64 rows x 8 kv heads x 2 = 1024.
        assert_eq!(splits(64, shape, &buf(8192)), 2);
        assert_eq!(decode_splits(64, shape, &buf(8192)).min_keys, 32);
        assert!(!decode_splits(64, shape, &buf(8192)).batch);
        // Enough (row, kv head) pairs already: the batch rule, whatever the context.
        let batch = DecodeSplits {
            splits: 4,
            min_keys: 256,
            batch: true,
        };
        assert_eq!(decode_splits(67, shape, &buf(8192)), batch);
        assert_eq!(decode_splits(256, shape, &buf(8192)), batch);
        assert_eq!(decode_splits(256, shape, &buf(16)), batch);
        let off = SplitBuffers {
            batch_splits: 1,
            ..buf(8192)
        };
        assert_eq!(splits(256, shape, &off), 1);
        // Never more rows × splits than the scratch holds.
        let mha = AttentionShape {
            num_kv_heads: 1,
            num_heads: 8,
            ..shape
        };
        assert!(splits(200, mha, &buf(1 << 20)) * 200 <= 1024);
        assert_eq!(splits(512, shape, &buf(8192)), 2);
        assert_eq!(splits(2048, shape, &buf(8192)), 1);
        assert_eq!(splits(0, shape, &buf(8192)), 1);
        // A GQA group of 32 heads takes two CTAs per (row, kv head).
        let mqa = AttentionShape {
            num_kv_heads: 1,
            ..shape
        };
        assert_eq!(decode_head_tiles(mqa), 2);
        assert_eq!(splits(4, mqa, &buf(1 << 16)), 132);
    }

    #[test]
    fn a_large_batch_splits_only_uneven_rows() {
        let batch = DecodeSplits {
            splits: 4,
            min_keys: 256,
            batch: true,
        };
        let keys = |lens: &[usize]| step_min_split_keys(batch, lens.iter().copied());
        // Even rows (padding rows of length 0 left out): no split.
        assert_eq!(keys(&[1024; 256]), NO_SPLIT_KEYS);
        assert_eq!(keys(&[1000, 1100, 1200, 0, 0]), NO_SPLIT_KEYS);
        // The longest above 5/4 of the mean: splits of at least 256 keys.
        assert_eq!(keys(&[100, 2000, 1000]), 256);
        assert_eq!(keys(&[1000, 1000, 1000, 1400]), 256);
        assert_eq!(keys(&[0, 0]), NO_SPLIT_KEYS);
        // Few rows, or splits off: the rule's own.
        let few = DecodeSplits {
            batch: false,
            min_keys: 64,
            splits: 16,
        };
        assert_eq!(step_min_split_keys(few, [100, 2000].into_iter()), 64);
        let off = DecodeSplits { splits: 1, ..batch };
        assert_eq!(step_min_split_keys(off, [100, 2000].into_iter()), 256);
    }
}
