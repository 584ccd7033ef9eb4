//! `out = x · wᵀ (+ bias)` through cuBLASLt: bf16/f16 operands, fp32 accumulation, output in
//! the activation dtype or fp32 (the LM head's logits).
//!
//! Row-major `x [rows, k]`, `w [n, k]` and `out [rows, n]` are, read column-major,
//! `xᵀ [k, rows]`, `wᵀ [k, n]` and `outᵀ [n, rows]`, so cuBLASLt computes
//! `outᵀ = op(wᵀ)ᵀ · xᵀ` with `transa = T`: m = n, n = rows, k = k.
//!
//! Descriptors and the heuristic's algorithm are made once per shape and kept: the heuristic
//! query costs tens of microseconds, the cached launch a few.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream};

use crate::error::{Error, Result};

/// Element type of a GEMM operand or result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    Bf16,
    F16,
    F32,
    /// e4m3fn codes (an input only), scaled by an f32 vector per operand: one scale per row
    /// of the weight and one per row of the activations, applied in the epilogue
    /// (cuBLASLt's outer-vector scaling, CUDA 12.9+, sm_89+).
    Fp8E4m3,
    /// e4m3fn codes taken as they are (both scales 1): the caller scales the output
    /// (`fp8_scale_out`), where cuBLASLt has no outer-vector scaling (Hopper).
    Fp8E4m3Raw,
}

impl ElemType {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            ElemType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            ElemType::F16 => sys::cudaDataType::CUDA_R_16F,
            ElemType::F32 => sys::cudaDataType::CUDA_R_32F,
            ElemType::Fp8E4m3 | ElemType::Fp8E4m3Raw => sys::cudaDataType::CUDA_R_8F_E4M3,
        }
    }
}

/// The shape and types of one GEMM; the key of the plan cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub rows: usize,
    pub n: usize,
    pub k: usize,
    pub input: ElemType,
    pub output: ElemType,
    pub bias: bool,
}

impl GemmShape {
    /// `rows` rows of `input` through an `[n, k]` matrix into `output` (plus a bias vector when
    /// `bias`).
    pub fn of(
        rows: usize,
        (n, k): (usize, usize),
        (input, output): (ElemType, ElemType),
        bias: bool,
    ) -> GemmShape {
        GemmShape {
            rows,
            n,
            k,
            input,
            output,
            bias,
        }
    }
}

/// Descriptors and algorithm for one [`GemmShape`].
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created in `Plan::new` and is destroyed once, here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    Error::Engine(format!("cuBLASLt {what}: {e:?}"))
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, s: GemmShape, workspace_bytes: usize) -> Result<Plan> {
        let (m, n, k) = (s.n as u64, s.rows as u64, s.k as u64);
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(|e| lt_err("matmul desc", e))?;
        let mut plan = Plan {
            desc,
            a: lt::create_matrix_layout(s.input.cuda(), k, m, k as i64)
                .map_err(|e| lt_err("layout", e))?,
            b: lt::create_matrix_layout(s.input.cuda(), k, n, k as i64)
                .map_err(|e| lt_err("layout", e))?,
            d: lt::create_matrix_layout(s.output.cuda(), m, n, m as i64)
                .map_err(|e| lt_err("layout", e))?,
            // SAFETY: plain-old-data; overwritten by the heuristic below.
            algo: unsafe { std::mem::zeroed() },
        };
        let transpose: i32 = 1;
        // SAFETY: the attribute values outlive the calls and have the documented sizes.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &transpose as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(|e| lt_err("transa", e))?;
            if s.input == ElemType::Fp8E4m3 {
                let mode =
                    sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                for attr in [
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                ] {
                    lt::set_matmul_desc_attribute(
                        desc,
                        attr,
                        &mode as *const _ as *const c_void,
                        size_of::<sys::cublasLtMatmulMatrixScale_t>(),
                    )
                    .map_err(|e| lt_err("scale mode", e))?;
                }
            }
            if s.bias {
                let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                lt::set_matmul_desc_attribute(
                    desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &epilogue as *const _ as *const c_void,
                    size_of::<sys::cublasLtEpilogue_t>(),
                )
                .map_err(|e| lt_err("epilogue", e))?;
            }
            let pref = lt::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
            let ws = workspace_bytes as u64;
            let found = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                size_of::<u64>(),
            )
            .and_then(|()| {
                lt::get_matmul_algo_heuristic(handle, desc, plan.a, plan.b, plan.d, plan.d, pref)
            });
            let _ = lt::destroy_matmul_pref(pref);
            plan.algo = found
                .map_err(|e| lt_err(&format!("no algorithm for {s:?}"), e))?
                .algo;
        }
        Ok(plan)
    }
}

/// A cuBLASLt handle, its workspace and the plans made so far. Used from one thread.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    plans: RefCell<HashMap<GemmShape, Plan>>,
}

// SAFETY: the handle and plans are only used by the thread that owns the backend; moving them
// between threads (the engine moves into its own thread once) is allowed by cuBLASLt.
unsafe impl Send for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: created in `Gemm::new`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Gemm {
    /// A handle with `workspace` (cuBLASLt asks for 32 MiB on Hopper) whose device address
    /// is `workspace_ptr`.
    pub fn new(workspace: CudaSlice<u8>, workspace_ptr: u64) -> Result<Gemm> {
        let handle = lt::create_handle().map_err(|e| lt_err("create handle", e))?;
        Ok(Gemm {
            handle,
            workspace,
            workspace_ptr,
            plans: RefCell::new(HashMap::new()),
        })
    }

    /// Whether cuBLASLt has an algorithm for `shape` (its plan is made and kept if so). FP8
    /// with outer-vector scales, for one, is refused by the cuBLASLt of CUDA 13.0 on Hopper.
    pub fn supports(&self, shape: GemmShape) -> bool {
        let mut plans = self.plans.borrow_mut();
        if plans.contains_key(&shape) {
            return true;
        }
        match Plan::new(self.handle, shape, self.workspace.len()) {
            Ok(plan) => {
                plans.insert(shape, plan);
                true
            }
            Err(_) => false,
        }
    }

    /// Enqueues `out = x · wᵀ (+ bias)` on `stream`. Pointers are device addresses of buffers
    /// large enough for `shape`.
    pub fn run(
        &self,
        shape: GemmShape,
        x: u64,
        w: u64,
        bias: Option<u64>,
        out: u64,
        stream: &CudaStream,
    ) -> Result<()> {
        self.run_scaled(shape, x, w, bias, None, out, stream)
    }

    /// [`run`](Self::run) with FP8 inputs (`shape.input` [`ElemType::Fp8E4m3`]) and their
    /// `scales`: (`[n]` f32 of `w`'s rows, `[rows]` f32 of `x`'s rows).
    #[allow(clippy::too_many_arguments)]
    pub fn run_scaled(
        &self,
        shape: GemmShape,
        x: u64,
        w: u64,
        bias: Option<u64>,
        scales: Option<(u64, u64)>,
        out: u64,
        stream: &CudaStream,
    ) -> Result<()> {
        debug_assert_eq!(scales.is_some(), shape.input == ElemType::Fp8E4m3);
        debug_assert!(!(shape.bias && shape.input == ElemType::Fp8E4m3Raw));
        let mut plans = self.plans.borrow_mut();
        let plan = match plans.entry(shape) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Plan::new(self.handle, shape, self.workspace.len())?),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the plan matches `shape`, the caller guarantees the buffers' sizes, and the
        // bias pointer (when the plan has the bias epilogue) stays valid for the launch.
        unsafe {
            if let Some(b) = bias {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &b as *const u64 as *const c_void,
                    size_of::<u64>(),
                )
                .map_err(|e| lt_err("bias pointer", e))?;
            }
            if let Some((w_scales, x_scales)) = scales {
                for (attr, ptr) in [
                    (
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                        w_scales,
                    ),
                    (
                        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                        x_scales,
                    ),
                ] {
                    lt::set_matmul_desc_attribute(
                        plan.desc,
                        attr,
                        &ptr as *const u64 as *const c_void,
                        size_of::<u64>(),
                    )
                    .map_err(|e| lt_err("scale pointer", e))?;
                }
            }
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                plan.a,
                x as *const c_void,
                plan.b,
                out as *const c_void,
                plan.d,
                out as *mut c_void,
                plan.d,
                &plan.algo,
                self.workspace_ptr as *mut c_void,
                self.workspace.len(),
                stream.cu_stream() as sys::cudaStream_t,
            )
            .map_err(|e| lt_err(&format!("matmul {shape:?}"), e))
        }
    }
}
