// Shared prelude of every Infire kernel. The runtime compiles `common.cuh + "\n" + <kernel>.cu`
// as one NVRTC program, so kernel files never include this header themselves.
//
// Compile-time constants (-D), given to every kernel file:
//   INFIRE_DTYPE_BF16 or INFIRE_DTYPE_F16   activation / KV-cache element type T (exactly one)
//   HEAD_DIM, NUM_HEADS, NUM_KV_HEADS       attention shape of the model
//   KV_BLOCK_SIZE                           tokens per paged KV-cache block
//   KV_FP8 (optional)                       the KV cache holds e4m3 codes (type KV below)
//
// Numeric convention: T is storage only. Kernels load T, compute in fp32 and round to T with
// round-to-nearest-even once per stored value, as torch does for each bf16/f16 op.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if defined(INFIRE_DTYPE_BF16) == defined(INFIRE_DTYPE_F16)
#error "define exactly one of INFIRE_DTYPE_BF16 and INFIRE_DTYPE_F16"
#endif

#ifdef INFIRE_DTYPE_BF16
typedef __nv_bfloat16 T;
__device__ __forceinline__ float to_float(T x) { return __bfloat162float(x); }
__device__ __forceinline__ T from_float(float x) { return __float2bfloat16_rn(x); }
#else
typedef __half T;
__device__ __forceinline__ float to_float(T x) { return __half2float(x); }
__device__ __forceinline__ T from_float(float x) { return __float2half_rn(x); }
#endif

// NVRTC has no <cmath>, hence no INFINITY.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Programmatic dependent launch (sm_90+). The runtime launches kernels with the programmatic
// stream serialization attribute, so a kernel's CTAs may start while the kernel before it on the
// stream is still running. Every kernel therefore calls pdl_begin() before it reads anything an
// earlier kernel wrote and before it writes anything: griddepcontrol.wait returns once the
// preceding grid has completed and its writes are visible (at once when there is no such
// launch). It then lets the next kernel's CTAs be scheduled, so their launch, and any prologue
// they run before their own wait (a GEMV's first weight loads), overlap this kernel's work.
// tests/test_kernel_compile.py checks that every kernel calls it.
__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" :::);
#endif
}

// One 16-byte vector = 8 elements of T: the unit of every global load and store of T.
constexpr int VEC = 8;
typedef uint4 Vec;

__device__ __forceinline__ Vec load_vec(const T* p) { return *reinterpret_cast<const Vec*>(p); }
__device__ __forceinline__ void store_vec(T* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

__device__ __forceinline__ void vec_to_float(Vec v, float (&f)[VEC]) {
    const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) f[i] = to_float(e[i]);
}

__device__ __forceinline__ Vec float_to_vec(const float (&f)[VEC]) {
    Vec v;
    T* e = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int i = 0; i < VEC; ++i) e[i] = from_float(f[i]);
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions; blockDim.x must be a multiple of 32. Every thread gets the result.
// The leading barrier lets a kernel call them several times with the same scratch.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// --- Rows held in registers (rms_norm.cu, fp8_fused.cu) --------------------------------------

// Row `x` (hidden elements of T) into v: vector i of this thread is columns
// (i * THREADS + threadIdx.x) * 8 ..; returns this thread's share of the row's sum of squares.
template <int VECS, int THREADS>
__device__ __forceinline__ float load_row(const T* __restrict__ x, float (&v)[VECS][VEC],
                                          int hidden) {
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
        const int c = (i * THREADS + threadIdx.x) * VEC;
        if (c >= hidden) break;
        vec_to_float(load_vec(x + c), v[i]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum_sq += v[i][j] * v[i][j];
    }
    return sum_sq;
}

// residual = round(residual + x), stored, and the stored row into v as load_row reads it.
template <int VECS, int THREADS>
__device__ __forceinline__ float add_load_row(T* __restrict__ residual, const T* __restrict__ x,
                                              float (&v)[VECS][VEC], int hidden) {
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
        const int c = (i * THREADS + threadIdx.x) * VEC;
        if (c >= hidden) break;
        float a[VEC], b[VEC];
        vec_to_float(load_vec(residual + c), a);
        vec_to_float(load_vec(x + c), b);
#pragma unroll
        for (int j = 0; j < VEC; ++j) a[j] += b[j];
        const Vec sum = float_to_vec(a);
        store_vec(residual + c, sum);
        // The stored (rounded) sum, so that the next layer's residual and the norm agree.
        vec_to_float(sum, v[i]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum_sq += v[i][j] * v[i][j];
    }
    return sum_sq;
}

// --- The GEMV family (gemv.cu, gemv_fp8_mma.cu) ----------------------------------------------

// The projection's prologue (what it reads as input) and epilogue (what it does with a sum).
enum { PRO_PLAIN = 0, PRO_NORM = 1 };
enum { EPI_STORE = 0, EPI_F32 = 1, EPI_ADD = 2, EPI_SILU = 3 };

// The scale layout of an FP8 matrix: scales[(row >> srow_shift) * s_ld + (col >> scol_shift)].
struct WScales {
    const float* __restrict__ s;
    int srow_shift, scol_shift, s_ld;
};

// A 16-byte load of weights read once: not kept in L1.
__device__ __forceinline__ Vec load_stream(const void* p) {
    Vec v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ float round_t(float v) { return to_float(from_float(v)); }

// xin(m, k0 .. k0 + 7) of the prologue, as floats: row m of x, or its RMSNorm rounded where
// the unfused kernels round (inv_rms of the row given).
template <int PRO>
__device__ __forceinline__ void load_input(const T* __restrict__ x, const T* __restrict__ nw,
                                           int m, int k, int k0, float inv_rms,
                                           float (&f)[VEC]) {
    vec_to_float(load_vec(x + (long long)m * k + k0), f);
    if (PRO == PRO_NORM) {
        float w[VEC];
        vec_to_float(load_vec(nw + k0), w);
#pragma unroll
        for (int i = 0; i < VEC; ++i) f[i] = round_t(round_t(f[i] * inv_rms) * w[i]);
    }
}

// --- FP8 (e4m3fn) codes (fp8.cu) ---------------------------------------------------------------

// The value of e4m3 code `b` times 2^-120, exactly: the code's exponent and mantissa bits placed
// in the low exponent and high mantissa bits of an f32 (subnormal codes become f32 subnormals,
// which the kernels keep: NVRTC compiles without -ftz).
__device__ __forceinline__ float e4m3_raw(unsigned b) {
    return __uint_as_float(((b & 0x7fu) << 20) | ((b & 0x80u) << 24));
}
constexpr float E4M3_RAW_SCALE = 1.329227995784916e36f;  // 2^120
__device__ __forceinline__ float e4m3_to_float(unsigned b) { return e4m3_raw(b) * E4M3_RAW_SCALE; }

// Codes (bytes 0, 1) and (bytes 2, 3) of `w` as two f16x2, the lower byte in the lower half,
// exactly (sm_89+: the conversion instruction; the FP8 GEMVs).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 890
__device__ __forceinline__ void e4m3x4_to_f16x2(unsigned w, unsigned& lo, unsigned& hi) {
    asm("{\n\t.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\t"
        "cvt.rn.f16x2.e4m3x2 %0, l;\n\tcvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
}
#endif

// Rounds |f| <= 448 (larger magnitudes saturate) to the nearest e4m3 code, ties to even.
__device__ __forceinline__ unsigned float_to_e4m3(float f) {
    const unsigned sign = (__float_as_uint(f) >> 24) & 0x80u;
    const float a = fminf(fabsf(f), 448.0f);
    if (a < 0.015625f) return sign | __float2uint_rn(a * 512.0f);  // subnormal (8 = 2^-6)
    unsigned u = __float_as_uint(a);
    u += 0x7ffffu + ((u >> 20) & 1u);  // round the mantissa to 3 bits, ties to even
    const unsigned e = (u >> 23) - 120u, m = (u >> 20) & 7u;  // e - 127 + 7
    return sign | (e << 3) | m;
}

// The KV cache's element: T, or with KV_FP8 an e4m3 code. An FP8 cache has one scale per layer
// for K and one for V (a cached key is its code's value times k_scale; from the checkpoint, or
// 1 as in vLLM); rope_cache_write divides by it, and the attention kernels fold it into the
// softmax scale (K) and the output (V), so that the codes decode to T exactly (every e4m3 value
// is a bf16 and an f16 value).
#ifdef KV_FP8
typedef unsigned char KV;
#else
typedef T KV;
#endif
[[maybe_unused]] constexpr int KV_VEC = 16 / (int)sizeof(KV);  // KV elements per 16-byte copy

// 16 e4m3 codes as two vectors of T, exactly.
__device__ __forceinline__ void e4m3x16_to_vecs(uint4 codes, Vec& lo, Vec& hi) {
    const unsigned w[4] = {codes.x, codes.y, codes.z, codes.w};
    float a[VEC], b[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        a[i] = e4m3_to_float((w[i / 4] >> (8 * (i % 4))) & 0xffu);
        b[i] = e4m3_to_float((w[2 + i / 4] >> (8 * (i % 4))) & 0xffu);
    }
    lo = float_to_vec(a);
    hi = float_to_vec(b);
}

// --- Tensor-core attention helpers (sm_80 PTX: mma.sync, ldmatrix, cp.async) -----------------

#ifdef INFIRE_DTYPE_BF16
#define MMA_AB_TYPE "bf16"
#else
#define MMA_AB_TYPE "f16"
#endif

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses registers; zero-fills dst when !valid.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}
// Waits until at most N of this thread's committed cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const T* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const T* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// d[16x8] += a[16x16] * b[16x8], fragments in the PTX ISA's m16n8k16 layout.
__device__ __forceinline__ void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                          unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." MMA_AB_TYPE "." MMA_AB_TYPE
                 ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to T and packed, the lower column in the low half.
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    unsigned r;
    T* e = reinterpret_cast<T*>(&r);
    e[0] = from_float(lo);
    e[1] = from_float(hi);
    return r;
}
