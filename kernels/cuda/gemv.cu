// Skinny GEMM for decode: out[r, j] = sum_i x[r, i] * w[j, i] (+ bias[j]), r < rows <= 8.
// `gemv` stores T, `gemv_f32` stores fp32 (the LM head's logits). bias may be nullptr.
//
// Layout: x [rows, k] T, w [n, k] T (nn.Linear's weight), bias [n] T, out [rows, n]; row-major.
// k is a multiple of 8 and <= 16384, n >= 1 (the last CTA may be partial), 1 <= rows <= 8,
// pointers 16-byte aligned.
// Launch: grid = ceil(n / 8), block = 256: 8 warps, one output column j = blockIdx.x * 8 + warp
// per warp. Lane l streams vectors l, l + 32, l + 64, ... of w[j] (16-byte loads, 4 in flight,
// then a tail loop), L1-bypassing so that x stays cached; x's matching vectors of every row are
// read with 16-byte __ldg loads (x is at most 8 x 32 KiB and stays in L1/L2). Every weight byte
// is read once per call, whatever `rows` is.
// Numerics: fp32 products and accumulation (per lane in order, then a butterfly warp_sum), bias
// added in fp32, one rounding to T (`gemv`) or none (`gemv_f32`).

constexpr int GEMV_WARPS = 8;
constexpr int GEMV_MAX_ROWS = 8;
constexpr int GEMV_UNROLL = 4;

// Streaming 16-byte load of read-only data, not allocated in L1.
__device__ __forceinline__ Vec load_stream(const Vec* p) {
    Vec v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// acc[r] += sum over u of dot(x[r] vector v + 32 u, wf[u]) for r < rows and u < U. Row by
// row, so that the U x loads of a row are in flight together.
template <int U>
__device__ __forceinline__ void gemv_fma(const Vec* __restrict__ xv, int kv, int v, int rows,
                                         const float (&wf)[U][VEC],
                                         float (&acc)[GEMV_MAX_ROWS]) {
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
        if (r < rows) {
            Vec xr[U];
#pragma unroll
            for (int u = 0; u < U; ++u) xr[u] = __ldg(xv + r * kv + v + u * 32);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float xf[VEC];
                vec_to_float(xr[u], xf);
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[r] = fmaf(xf[i], wf[u][i], acc[r]);
            }
        }
    }
}

// Returns lane r's row-r result (fp32, bias included) in lanes 0..rows-1; j is the column.
__device__ __forceinline__ float gemv_column(const T* __restrict__ x, const T* __restrict__ w,
                                             const T* __restrict__ bias, int rows, int k, int j,
                                             int lane) {
    const int kv = k / VEC;
    const Vec* xv = reinterpret_cast<const Vec*>(x);
    const Vec* wv = reinterpret_cast<const Vec*>(w + static_cast<long long>(j) * k);
    float acc[GEMV_MAX_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) acc[r] = 0.0f;

    int v = lane;
    for (; v + (GEMV_UNROLL - 1) * 32 < kv; v += GEMV_UNROLL * 32) {
        Vec wr[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) wr[u] = load_stream(wv + v + u * 32);
        float wf[GEMV_UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) vec_to_float(wr[u], wf[u]);
        gemv_fma<GEMV_UNROLL>(xv, kv, v, rows, wf, acc);
    }
    for (; v < kv; v += 32) {
        float wf[1][VEC];
        vec_to_float(load_stream(wv + v), wf[0]);
        gemv_fma<1>(xv, kv, v, rows, wf, acc);
    }

    float mine = 0.0f;
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
        if (r < rows) {
            const float s = warp_sum(acc[r]);
            if (lane == r) mine = s;
        }
    }
    if (bias != nullptr) mine += to_float(bias[j]);
    return mine;
}

extern "C" __global__ void __launch_bounds__(256)
gemv(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
     T* __restrict__ out, int rows, int n, int k) {
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= n) return;
    const float y = gemv_column(x, w, bias, rows, k, j, lane);
    if (lane < rows) out[static_cast<long long>(lane) * n + j] = from_float(y);
}

extern "C" __global__ void __launch_bounds__(256)
gemv_f32(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
         float* __restrict__ out, int rows, int n, int k) {
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= n) return;
    const float y = gemv_column(x, w, bias, rows, k, j, lane);
    if (lane < rows) out[static_cast<long long>(lane) * n + j] = y;
}
