// Per-head RMSNorm of q and k in place (Qwen3's q_norm / k_norm), one warp per (row, head):
//   q head h (h < NUM_HEADS) at columns h * HEAD_DIM, weight q_w [HEAD_DIM];
//   k head h at columns NUM_HEADS * HEAD_DIM + h * HEAD_DIM, weight k_w [HEAD_DIM].
// y = round(round(x * rsqrt(mean(x^2) + eps)) * w), as transformers' RMSNorm (see rms_norm.cu).
//
// Layout: qkv [rows, qkv_width] T, row-major: q heads, k heads, v heads (v untouched).
// Launch: grid = (rows, NUM_HEADS + NUM_KV_HEADS), block = 32. Lane i < HEAD_DIM / 8 holds the
// 16-byte vector i of the head; fp32 sum of squares by warp shuffles.
static_assert(HEAD_DIM % VEC == 0 && HEAD_DIM / VEC <= 32, "qk_norm: HEAD_DIM must be 8..256");

extern "C" __global__ void __launch_bounds__(32)
qk_norm(T* __restrict__ qkv, const T* __restrict__ q_w, const T* __restrict__ k_w,
        int qkv_width, float eps) {
    pdl_begin();
    const int head = blockIdx.y;
    const T* w = head < NUM_HEADS ? q_w : k_w;
    T* x = qkv + (long long)blockIdx.x * qkv_width + head * HEAD_DIM;
    const int c = threadIdx.x * VEC;
    const bool active = c < HEAD_DIM;

    float v[VEC] = {};
    if (active) vec_to_float(load_vec(x + c), v);
    float sum_sq = 0.0f;
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum_sq += v[j] * v[j];
    const float inv_rms = rsqrtf(warp_sum(sum_sq) / (float)HEAD_DIM + eps);
    if (!active) return;

    float wf[VEC];
    vec_to_float(load_vec(w + c), wf);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = to_float(from_float(v[j] * inv_rms)) * wf[j];
    store_vec(x + c, float_to_vec(v));
}
