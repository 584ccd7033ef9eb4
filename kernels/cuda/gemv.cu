// Projections of one-row steps (single-stream decode), with the element-wise work around them
// fused in:
//
//   out[m, n] = epilogue( sum_k W[n, k] * xin(m, k) )        m < rows <= M, n < N
//
// Prologues (how xin is read; each rounds where the unfused kernel it replaces rounds):
//   plain: xin(m, k) = x[m, k]                                             x [rows, K]
//   norm:  xin(m, k) = round(round(x[m, k] * r[m]) * nw[k]),               x [rows, K], nw [K]
//          r[m] = rsqrt(mean_k x[m, k]^2 + eps)  (rms_norm.cu's roundings; its block sum of
//          squares adds the 8 warps' shares in another order, so r[m] may differ by an ulp)
// Epilogues (acc[m, n] the sum above):
//   store: out[m, n] = round(acc + bias[n])                 out T [rows, N]; bias may be null
//   f32:   out[m, n] = acc + bias[n]                        out f32 [rows, N] (logits)
//   add:   out[m, n] = round(out[m, n] + round(acc))        out T [rows, N], the residual stream
//          (= the unfused GEMM's rounded output added by add_rms_norm.cu); takes no bias
//   silu:  out[m, j] = round(silu(g) * u), g = round(acc[m, j]), u = round(acc[m, N/2 + j])
//          out T [rows, N/2], W = [gate; up] (the fused gate/up projection): the unfused
//          GEMM's rounded output followed by silu_mul.cu, so the down projection reads a
//          plain input; takes no bias; N a multiple of 4
//
// W is [N, K] row-major (nn.Linear). Reading W is the whole cost at these row counts, so the
// kernel is built around streaming it: each CTA owns `cols_per_cta` consecutive output columns
// (one contiguous range of W's rows; two with silu, one of gate rows and the matching one of up
// rows), taken GROUP columns at a time; every thread holds GROUP x UNROLL 16-byte vectors of W
// in flight and loads the next ones as soon as it has used these, before the group's block
// reduction (so the reduction overlaps the next loads). With silu a group is two gate rows and
// the two up rows of the same outputs, so its reduction has both factors of two outputs. The
// host sizes cols_per_cta so that the whole grid is resident at once (one wave, no tail). x is
// read through L1 and the prologue applied as each group reads it (running the prologue once per
// CTA into shared memory instead was slower: it puts a pass over x and a barrier before the
// first product; kernels/cuda/NOTES.md). Loads of W go around L1 (`ld.global.nc.L1::no_allocate`).
//
// FP8 weights (the *_fp8_m1 entry points): W is [N, K] e4m3fn codes (fp8.cu) with f32 scales,
// W[n, k] = decode(code) * ws[(n >> srow_shift) * s_ld + (k >> scol_shift)] (one scale per
// row: 0, 1, 31; 128 x 128 blocks: 7, ceil(K / 128), 7). A 16-byte vector of W then holds 16
// weights, so each streams half the bytes of the bf16 kernel per weight. Products are taken
// with the codes decoded to f32 exactly but 2^120 too small (e4m3_raw: two integer operations a
// weight, no conversion instruction), summed over the vector's 16 weights and scaled once per
// vector by the vector's scale times 2^120 (a vector never straddles a 128-block). K a multiple
// of 16. The scales are read with the weights, before pdl_begin(): like the weights, they are
// written once at load (fp8_quantize_rows or the checkpoint's upload), never by a step's kernels.
//
// Launch: grid = ceil(N / cols_per_cta), block = GEMV_THREADS; cols_per_cta a multiple of
// GROUP; K a multiple of 8; rows >= 1. Rows m >= rows of out are not touched.
// Numerics: fp32 products and sums; the order of the k-sum differs from cuBLASLt's.
// The kernel waits for the preceding kernel (pdl_begin, common.cuh) only after its first loads
// of W, which depend on no kernel: under programmatic dependent launch they overlap the previous
// kernel's tail.

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int GROUP = 4;

enum { WF_DENSE = 0, WF_FP8 = 1 };

// PRO_*, EPI_*, WScales, load_stream, round_t and load_input: common.cuh.

// The row of W behind output column c: c itself, or with silu the c-th of the sequence
// gate 0, gate 1, up 0, up 1, gate 2, gate 3, up 2, up 3, ... (up j is row n / 2 + j).
template <int EPI>
__device__ __forceinline__ int w_row(int c, int n) {
    if (EPI != EPI_SILU) return c;
    return (c >> 2) * 2 + (c & 1) + ((c & 2) ? n / 2 : 0);
}

template <int M, int PRO, int EPI, int UNROLL, int WF>
__device__ __forceinline__ void gemv(const void* __restrict__ W, WScales ws,
                                     const T* __restrict__ x, const T* __restrict__ nw,
                                     const T* __restrict__ bias, void* __restrict__ out, int rows,
                                     int n, int k, int cols_per_cta, float eps) {
    __shared__ float s_part[GEMV_WARPS][M];
    __shared__ float s_red[2][GEMV_WARPS][GROUP * M];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    constexpr int EPV = WF == WF_FP8 ? 16 : VEC;  // weights per 16-byte vector of W
    constexpr int WBYTES = WF == WF_FP8 ? 1 : (int)sizeof(T);
    const int kv = k / EPV;  // 16-byte vectors per row of W
    const char* Wb = static_cast<const char*>(W);
    const int col0 = blockIdx.x * cols_per_cta;
    const int col_end = min(col0 + cols_per_cta, n);
    if (col0 >= col_end) return;

    // W[c0 + g, (v0 + u * THREADS + tid) * 8 ..] for every g, u; zeros outside the matrix.
    // With FP8 weights, wsc[g][u] is the scale of w[g][u] (times 2^120).
    Vec w[GROUP][UNROLL];
    float wsc[GROUP][UNROLL];
    auto load_w = [&](int c0, int v0) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g)
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int v = v0 + u * GEMV_THREADS + tid;
                const bool in = c0 + g < col_end && v < kv;
                const long long row = w_row<EPI>(c0 + g, n);
                w[g][u] = in ? load_stream(Wb + (row * k + (long long)v * EPV) * WBYTES)
                             : make_uint4(0, 0, 0, 0);
                if (WF == WF_FP8)
                    wsc[g][u] = in ? __ldg(ws.s + (row >> ws.srow_shift) * ws.s_ld +
                                           ((v * EPV) >> ws.scol_shift))
                                   : 0.0f;
            }
    };
    int c0 = col0, v0 = 0;
    load_w(c0, v0);  // the weights depend on no kernel: load them before waiting for one
    pdl_begin();

    float inv_rms[M];
#pragma unroll
    for (int m = 0; m < M; ++m) inv_rms[m] = 1.0f;
    if (PRO == PRO_NORM) {
        float ss[M];
#pragma unroll
        for (int m = 0; m < M; ++m) ss[m] = 0.0f;
        for (int v = tid; v < k / VEC; v += GEMV_THREADS) {  // x in VEC-wide vectors
#pragma unroll
            for (int m = 0; m < M; ++m) {
                if (m >= rows) break;
                float f[VEC];
                vec_to_float(load_vec(x + (long long)m * k + v * VEC), f);
#pragma unroll
                for (int i = 0; i < VEC; ++i) ss[m] += f[i] * f[i];
            }
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            ss[m] = warp_sum(ss[m]);
            if (lane == 0) s_part[warp][m] = ss[m];
        }
        __syncthreads();
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float total = 0.0f;
#pragma unroll
            for (int i = 0; i < GEMV_WARPS; ++i) total += s_part[i][m];
            inv_rms[m] = rsqrtf(total / (float)k + eps);
        }
    }

    float acc[GROUP][M];
#pragma unroll
    for (int g = 0; g < GROUP; ++g)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[g][m] = 0.0f;
    int parity = 0;
    while (c0 < col_end) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int v = v0 + u * GEMV_THREADS + tid;
            if (v >= kv) break;
#pragma unroll
            for (int m = 0; m < M; ++m) {
                if (m >= rows) break;
                if (WF == WF_FP8) {
                    float part[GROUP];
#pragma unroll
                    for (int g = 0; g < GROUP; ++g) part[g] = 0.0f;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {  // the vector's two halves of 8 weights
                        float xf[VEC];
                        load_input<PRO>(x, nw, m, k, v * EPV + h * VEC, inv_rms[m], xf);
#pragma unroll
                        for (int g = 0; g < GROUP; ++g) {
                            const unsigned lo = h ? w[g][u].z : w[g][u].x;
                            const unsigned hi = h ? w[g][u].w : w[g][u].y;
#pragma unroll
                            for (int i = 0; i < VEC; ++i)
                                part[g] += e4m3_raw(((i < 4 ? lo : hi) >> (8 * (i % 4))) & 0xffu) *
                                           xf[i];
                        }
                    }
#pragma unroll
                    for (int g = 0; g < GROUP; ++g)
                        acc[g][m] += part[g] * E4M3_RAW_SCALE * wsc[g][u];
                } else {
                    float xf[VEC];
                    load_input<PRO>(x, nw, m, k, v * VEC, inv_rms[m], xf);
#pragma unroll
                    for (int g = 0; g < GROUP; ++g) {
                        float wf[VEC];
                        vec_to_float(w[g][u], wf);
#pragma unroll
                        for (int i = 0; i < VEC; ++i) acc[g][m] += wf[i] * xf[i];
                    }
                }
            }
        }
        // Next vectors of W: the rest of this group's rows, or the next group's.
        v0 += UNROLL * GEMV_THREADS;
        const bool group_done = v0 >= kv;
        const int next_c0 = group_done ? c0 + GROUP : c0;
        if (group_done) v0 = 0;
        if (next_c0 < col_end) load_w(next_c0, v0);
        if (group_done) {
#pragma unroll
            for (int g = 0; g < GROUP; ++g)
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const float s = warp_sum(acc[g][m]);
                    if (lane == 0) s_red[parity][warp][g * M + m] = s;
                    acc[g][m] = 0.0f;
                }
            __syncthreads();
            if (EPI == EPI_SILU) {
                // Thread (g, m) pairs gate column c0 + g with up column c0 + 2 + g.
                if (tid < 2 * M) {
                    const int g = tid / M, m = tid % M;
                    if (c0 + g < col_end && m < rows) {
                        float sg = 0.0f, su = 0.0f;
#pragma unroll
                        for (int i = 0; i < GEMV_WARPS; ++i) {
                            sg += s_red[parity][i][g * M + m];
                            su += s_red[parity][i][(g + 2) * M + m];
                        }
                        const float gate = round_t(sg), up = round_t(su);
                        const long long o = (long long)m * (n / 2) + c0 / 2 + g;
                        static_cast<T*>(out)[o] = from_float(gate / (1.0f + expf(-gate)) * up);
                    }
                }
            } else if (tid < GROUP * M) {
                const int g = tid / M, m = tid % M, col = c0 + g;
                if (col < col_end && m < rows) {
                    float s = 0.0f;
#pragma unroll
                    for (int i = 0; i < GEMV_WARPS; ++i) s += s_red[parity][i][tid];
                    const long long o = (long long)m * n + col;
                    if (EPI == EPI_ADD) {
                        T* y = static_cast<T*>(out);
                        y[o] = from_float(to_float(y[o]) + round_t(s));
                    } else {
                        if (bias != nullptr) s += to_float(bias[col]);
                        if (EPI == EPI_F32)
                            static_cast<float*>(out)[o] = s;
                        else
                            static_cast<T*>(out)[o] = from_float(s);
                    }
                }
            }
            parity ^= 1;
        }
        c0 = next_c0;
    }
}

// One entry point per (weights, prologue, epilogue): gemv_<prologue>_<epilogue>_m1 for bf16/f16
// weights, gemv_<prologue>_<epilogue>_fp8_m1 for FP8 weights, for one row; 4 CTAs per SM (<= 64
// registers). The kernel is written for M <= 8 rows, but at 2-8 rows it lost to cuBLASLt
// (kernels/cuda/NOTES.md: each 4-column group re-reads x and redoes the prologue, which makes
// it instruction-bound), so only M = 1 is compiled.
// FP8_M1_UNROLL and FP8_M1_CTAS override the FP8 kernels' unroll and CTAs per SM with -D for
// bench/gemv_fp8_bench.py's variants; the engine compiles the defaults.
#ifndef FP8_M1_UNROLL
#define FP8_M1_UNROLL 1
#endif
#ifndef FP8_M1_CTAS
#define FP8_M1_CTAS 4
#endif
#define GEMV_ENTRY(NAME, PRO, EPI)                                                           \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, 4)                            \
        NAME##_m1(const T* __restrict__ W, const T* __restrict__ x, const T* __restrict__ nw, \
                  const T* __restrict__ bias, void* __restrict__ out, int rows, int n, int k, \
                  int cols_per_cta, float eps) {                                             \
        gemv<1, PRO, EPI, 2, WF_DENSE>(W, WScales{nullptr, 0, 0, 0}, x, nw, bias, out, rows, \
                                       n, k, cols_per_cta, eps);                             \
    }                                                                                        \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, FP8_M1_CTAS)                  \
        NAME##_fp8_m1(                                                                        \
        const unsigned char* __restrict__ W, const float* __restrict__ ws, int srow_shift,    \
        int scol_shift, int s_ld, const T* __restrict__ x, const T* __restrict__ nw,          \
        const T* __restrict__ bias, void* __restrict__ out, int rows, int n, int k,           \
        int cols_per_cta, float eps) {                                                        \
        gemv<1, PRO, EPI, FP8_M1_UNROLL, WF_FP8>(W, WScales{ws, srow_shift, scol_shift, s_ld}, \
                                                 x, nw, bias, out, rows, n, k, cols_per_cta,   \
                                                 eps);                                         \
    }

GEMV_ENTRY(gemv_plain_store, PRO_PLAIN, EPI_STORE)
GEMV_ENTRY(gemv_plain_f32, PRO_PLAIN, EPI_F32)
GEMV_ENTRY(gemv_plain_add, PRO_PLAIN, EPI_ADD)
GEMV_ENTRY(gemv_norm_store, PRO_NORM, EPI_STORE)
GEMV_ENTRY(gemv_norm_f32, PRO_NORM, EPI_F32)
GEMV_ENTRY(gemv_norm_silu, PRO_NORM, EPI_SILU)
