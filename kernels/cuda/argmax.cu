// Greedy sampling: out[r] = argmax(logits[r, 0:vocab]), the lowest index among equal maxima
// (as torch.argmax); NaN ranks below every number, -inf included.
//
// Layout: logits [rows, vocab] f32 row-major; out [rows] i32.
// Launch: grid = rows, block = 1024. Each thread scans a strided slice (coalesced, ascending
// index), then warps and the block reduce (value, index) pairs. Exact.
constexpr int ARGMAX_THREADS = 1024;

// Whether candidate (v, i) beats the current best (bv, bi).
__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi) {
    const bool v_nan = isnan(v), b_nan = isnan(bv);
    if (v_nan != b_nan) return b_nan;
    if (!v_nan && v != bv) return v > bv;
    return i < bi;
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
argmax(const float* __restrict__ logits, int vocab, int* __restrict__ out) {
    pdl_begin();
    const float* row = logits + (long long)blockIdx.x * vocab;
    // Start from "NaN at no index", which every element beats or ties past.
    float best = __int_as_float(0x7fffffff);
    int best_i = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += ARGMAX_THREADS) {
        const float v = row[i];
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int i = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
    }
    __shared__ float warp_best[32];
    __shared__ int warp_best_i[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_best[warp] = best, warp_best_i[warp] = best_i;
    __syncthreads();
    if (warp != 0) return;
    best = warp_best[lane];
    best_i = warp_best_i[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int i = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
    }
    if (lane == 0) out[blockIdx.x] = best_i;
}
