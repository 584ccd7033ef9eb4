// The element-wise kernels around an FP8 projection of several rows, fused with the FP8 steps
// on either side of it: each computes, bit for bit, what the unfused pair computes, and saves a
// launch and a round trip of the activations through memory.
//
//   rms_norm_fp8:       rms_norm.cu's rms_norm, then fp8.cu's fp8_quantize_rows of its output:
//                       q[r] = e4m3(y[r] / scale[r]), scale[r] = amax(y[r]) / 448 (1 when the
//                       row is all zeros), y[r] = round(round(x[r] * inv_rms) * w).
//   add_rms_norm_fp8:   rms_norm.cu's add_rms_norm (residual[r] = round(residual[r] + x[r])
//                       stored), then the same of the stored row.
//   fp8_scale_silu_mul: fp8.cu's fp8_scale_out of the fused gate/up projection's raw-code GEMM
//                       (g = round(raw_g * a[r] * ws[j]), u = round(raw_u * a[r] * ws[n + j])),
//                       then silu_mul.cu's out[r, j] = round(silu(g) * u).
//
// Where (backend/cuda/ops.rs, `INFIRE_FP8_FUSED=1`): an FP8 matrix with one scale per row on
// FP8 tensor cores, in a step of more rows than the GEMV takes. Unfused, its input is
// normalized into a buffer, read again and quantized into the FP8 GEMM's scratch, and the gate/up
// projection's raw output is scaled in place, read again by silu_mul. Fused, the norm writes the
// codes and scales straight into the scratch, and the scales are applied as silu_mul reads.
//
// Layout: x, residual [rows, hidden] T; w [hidden] T; q [rows, hidden] e4m3 codes; scales
// [rows] f32; raw [rows, 2n] T; a [rows], ws [2n] f32; out [rows, n] T.
// Launch: the norms: grid = rows, block = 256, hidden a multiple of 8, <= 16384 (the row stays
// in registers, as in rms_norm.cu). fp8_scale_silu_mul: grid = (ceil(n / (8 * 256)), rows),
// block = 256, n a multiple of 8.
constexpr int NORM_THREADS = 256;
constexpr int NORM_VECS = 8;  // vectors of the row a thread holds: hidden <= 8 * 8 * 256

// Normalizes the row held in v (vector i of this thread at column (i * 256 + tid) * 8) as
// rms_norm.cu does, then quantizes it as fp8_quantize_rows does.
__device__ __forceinline__ void normalize_quantize(float (&v)[NORM_VECS][VEC], float sum_sq,
                                                   const T* __restrict__ w,
                                                   unsigned char* __restrict__ q,
                                                   float* __restrict__ scale_out, int hidden,
                                                   float eps) {
    const float inv_rms = rsqrtf(block_sum(sum_sq) / (float)hidden + eps);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_VECS; ++i) {
        const int c = (i * NORM_THREADS + threadIdx.x) * VEC;
        if (c >= hidden) break;
        float wf[VEC];
        vec_to_float(load_vec(w + c), wf);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            v[i][j] = round_t(round_t(v[i][j] * inv_rms) * wf[j]);
            amax = fmaxf(amax, fabsf(v[i][j]));
        }
    }
    amax = block_max(amax);
    const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    if (threadIdx.x == 0) *scale_out = scale;
#pragma unroll
    for (int i = 0; i < NORM_VECS; ++i) {
        const int c = (i * NORM_THREADS + threadIdx.x) * VEC;
        if (c >= hidden) break;
        unsigned lo = 0, hi = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            lo |= float_to_e4m3(__fdiv_rn(v[i][j], scale)) << (8 * j);
            hi |= float_to_e4m3(__fdiv_rn(v[i][j + 4], scale)) << (8 * j);
        }
        *reinterpret_cast<uint2*>(q + c) = make_uint2(lo, hi);
    }
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
rms_norm_fp8(const T* __restrict__ x, const T* __restrict__ w, unsigned char* __restrict__ q,
             float* __restrict__ scales, int hidden, float eps) {
    pdl_begin();
    const long long row = (long long)blockIdx.x * hidden;
    float v[NORM_VECS][VEC];
    const float sum_sq = load_row<NORM_VECS, NORM_THREADS>(x + row, v, hidden);
    normalize_quantize(v, sum_sq, w, q + row, scales + blockIdx.x, hidden, eps);
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
add_rms_norm_fp8(T* __restrict__ residual, const T* __restrict__ x, const T* __restrict__ w,
                 unsigned char* __restrict__ q, float* __restrict__ scales, int hidden,
                 float eps) {
    pdl_begin();
    const long long row = (long long)blockIdx.x * hidden;
    float v[NORM_VECS][VEC];
    const float sum_sq =
        add_load_row<NORM_VECS, NORM_THREADS>(residual + row, x + row, v, hidden);
    normalize_quantize(v, sum_sq, w, q + row, scales + blockIdx.x, hidden, eps);
}

extern "C" __global__ void __launch_bounds__(256)
fp8_scale_silu_mul(const T* __restrict__ raw, const float* __restrict__ a_scales,
                   const float* __restrict__ w_scales, T* __restrict__ out, int n) {
    pdl_begin();
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (j >= n) return;
    const long long r = blockIdx.y;
    const float a = a_scales[r];
    const T* row = raw + r * 2 * n;
    float g[VEC], u[VEC], y[VEC];
    vec_to_float(load_vec(row + j), g);
    vec_to_float(load_vec(row + n + j), u);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        // fp8_scale_out's product, rounded to T as it stores it, then silu_mul's.
        const float gs = round_t(g[i] * a * w_scales[j + i]);
        const float us = round_t(u[i] * a * w_scales[n + j + i]);
        y[i] = gs / (1.0f + expf(-gs)) * us;
    }
    store_vec(out + r * n + j, float_to_vec(y));
}
