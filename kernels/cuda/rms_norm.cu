// RMSNorm, and the residual add fused with it, one row per CTA.
//
//   rms_norm:     out[r] = round(round(x[r] * rsqrt(mean(x[r]^2) + eps)) * w)
//   add_rms_norm: residual[r] = round(residual[r] + x[r]), then out[r] = rms_norm of the stored
//                 (rounded) residual[r], as above.
//
// Layout: x, residual, out [rows, hidden] T; w [hidden] T; row-major.
// Launch: grid = rows, block = 256. Each thread keeps its 16-byte vectors of the row in
// registers between the two passes, so hidden <= MAX_VECS_PER_THREAD * 8 * 256 = 16384.
// Numerics: the sum of squares in fp32; y = x * rsqrtf(...) is rounded to T before the
// product with w, as transformers' LlamaRMSNorm does (`weight * hidden_states.to(dtype)`).
// hidden is a multiple of 8.
constexpr int RMS_THREADS = 256;
constexpr int MAX_VECS_PER_THREAD = 8;

// Normalizes the row held in v (vector i of this thread at column (i * 256 + tid) * 8) and
// stores it; sum_sq is this thread's share of the row's sum of squares.
__device__ __forceinline__ void normalize_store(float (&v)[MAX_VECS_PER_THREAD][VEC],
                                                float sum_sq, const T* __restrict__ w,
                                                T* __restrict__ out, int hidden, float eps) {
    const float inv_rms = rsqrtf(block_sum(sum_sq) / (float)hidden + eps);
#pragma unroll
    for (int i = 0; i < MAX_VECS_PER_THREAD; ++i) {
        const int c = (i * RMS_THREADS + threadIdx.x) * VEC;
        if (c >= hidden) break;
        float wf[VEC], y[VEC];
        vec_to_float(load_vec(w + c), wf);
#pragma unroll
        for (int j = 0; j < VEC; ++j) y[j] = to_float(from_float(v[i][j] * inv_rms)) * wf[j];
        store_vec(out + c, float_to_vec(y));
    }
}

extern "C" __global__ void __launch_bounds__(RMS_THREADS)
rms_norm(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int hidden,
         float eps) {
    pdl_begin();
    const long long row = (long long)blockIdx.x * hidden;
    float v[MAX_VECS_PER_THREAD][VEC];
    const float sum_sq = load_row<MAX_VECS_PER_THREAD, RMS_THREADS>(x + row, v, hidden);
    normalize_store(v, sum_sq, w, out + row, hidden, eps);
}

extern "C" __global__ void __launch_bounds__(RMS_THREADS)
add_rms_norm(T* __restrict__ residual, const T* __restrict__ x, const T* __restrict__ w,
             T* __restrict__ out, int hidden, float eps) {
    pdl_begin();
    const long long row = (long long)blockIdx.x * hidden;
    float v[MAX_VECS_PER_THREAD][VEC];
    const float sum_sq =
        add_load_row<MAX_VECS_PER_THREAD, RMS_THREADS>(residual + row, x + row, v, hidden);
    normalize_store(v, sum_sq, w, out + row, hidden, eps);
}
