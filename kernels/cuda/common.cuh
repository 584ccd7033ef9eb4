// Shared prelude of every Infire kernel. The runtime compiles `common.cuh + "\n" + <kernel>.cu`
// as one NVRTC program, so kernel files never include this header themselves.
//
// Compile-time constants (-D), given to every kernel file:
//   INFIRE_DTYPE_BF16 or INFIRE_DTYPE_F16   activation / KV-cache element type T (exactly one)
//   HEAD_DIM, NUM_HEADS, NUM_KV_HEADS       attention shape of the model
//   KV_BLOCK_SIZE                           tokens per paged KV-cache block
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
