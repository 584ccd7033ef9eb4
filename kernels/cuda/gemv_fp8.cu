// One-row projections through an FP8 weight on the CUDA cores: gemv.cu's *_fp8_m1 kernels
// reworked for fewer instructions a weight byte. The same sums, prologues and epilogues (see
// gemv.cu's header for the math of each); M = 1.
//
//   out[n] = epilogue( sum_k W[n, k] * xin(k) ),  W[n, k] = decode(code[n, k]) * scale(n, k)
//
// Why: on an H100 the one-row FP8 step streams its weights at ~70 % of the copy rate where the
// bf16 GEMV streams 93 % (bench/gemv_fp8_bench.py), and *_fp8_m1 is bound by instruction issue,
// not by bytes in flight: its SASS (sm_90a) spends 505-687 instructions a thread for every 64
// bytes of W at K = 4096, 7.9-10.7 a byte, where the bf16 GEMV spends 2.8-4.3 (NOTES.md).
// Streaming 3 TB/s at those rates takes 71-109 % of the issue slots of 132 SMs, which stalls
// cannot leave free. Where they go, for a group of 4 rows of W and K = 4096 (a 256-thread CTA
// has one 16-byte vector a thread a row):
//   - decoding: ~4.5 integer instructions a weight (byte extraction, e4m3_raw's shifts and
//     masks) beside its FMA;
//   - the norm prologue's xin, recomputed for every group (two roundings an element);
//   - the group's reduction, once for every 64 bytes a thread: 4 warp sums of 5 shuffles and
//     adds each, the next group's addresses and scale loads, a barrier, the epilogue.
// What this kernel does instead:
//   - decode (sm_89+): one cvt.rn.f16x2.e4m3x2 for two codes, then f16 -> f32 (exact, as
//     e4m3_raw is; older GPUs keep e4m3_raw);
//   - xin kept in registers: where K <= 16 * GEMV_THREADS (every hidden size to 4096), a thread
//     reads the same 16 k of x in every group, so it computes them once, as 16 values of T in
//     8 registers (FP8_GEMV_XCACHE);
//   - FP8_GEMV_GROUP = 8 rows a group (with silu: 4 gate rows and their 4 up rows), so the
//     reduction and the next group's setup are paid once for 128 bytes of W a thread;
//   - the group's 8 warp sums by one reduce-scatter (9 shuffles, not 40): after it, lane l holds
//     the warp's sum of row (l >> 2) & 7. Each butterfly step adds a lane's own value to its
//     partner's as warp_sum does, so the sums are the same, bit for bit.
// Every product, partial sum and reduction is gemv.cu's in the same order, so the outputs are
// those of *_fp8_m1 bit for bit, except where e4m3_raw's 2^-120 scaling bites there: a partial
// sum of a vector below 2^-6 that needs bits the f32 subnormals lack (rounded there, exact here;
// a last-bit difference that a later, larger sum mostly absorbs), NaN codes (0x7f, 0xff: NaN
// here, +-480 there; no checkpoint the loader accepts has them), and partial sums past f32's
// range (bf16 inputs near 1e35: they overflow here, 2^120 later there). 5.2-6.0 instructions a
// byte (NOTES.md).
//
// Variants for bench/gemv_fp8_bench.py and the tests (-D; the engine compiles the defaults):
// FP8_GEMV_GROUP 4, FP8_GEMV_CTAS, FP8_GEMV_XCACHE 0, FP8_GEMV_CVT 0 (e4m3_raw's decoding, as
// before sm_89), and FP8_GEMV_ROWSCALE 1: with one scale per row, the scale
// multiplies each output's whole sum, so a group's loads carry no scales (568 instructions a
// group for plain_add and for norm_store, against 669 and 670; not bitwise *_fp8_m1's sums).
//
// Launch: grid = ceil(N / cols_per_cta), block = GEMV_THREADS; cols_per_cta a multiple of
// FP8_GEMV_GROUP (backend/cuda/kernels/gemv.rs); K a multiple of 16; rows = 1. With silu, N a
// multiple of 2. Scales as in gemv.cu (WScales); they and W are read before pdl_begin().

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
// Overridable with -D for bench/gemv_fp8_bench.py's variants; the engine compiles the defaults
// (backend/cuda/kernels/gemv.rs's FP8_GEMV_GROUP is FG).
#ifndef FP8_GEMV_GROUP
#define FP8_GEMV_GROUP 8
#endif
#ifndef FP8_GEMV_CTAS
#define FP8_GEMV_CTAS 3
#endif
#ifndef FP8_GEMV_XCACHE
#define FP8_GEMV_XCACHE 1
#endif
#ifndef FP8_GEMV_ROWSCALE
#define FP8_GEMV_ROWSCALE 0
#endif
// 0: decode with e4m3_raw on every GPU (the path of GPUs before sm_89, testable on any).
#ifndef FP8_GEMV_CVT
#define FP8_GEMV_CVT 1
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && FP8_GEMV_CVT
#define FP8_GEMV_DECODE_CVT 1
#else
#define FP8_GEMV_DECODE_CVT 0
#endif
constexpr int FG = FP8_GEMV_GROUP;  // rows of W a group: 4 or 8
static_assert(FG == 4 || FG == 8, "FP8_GEMV_GROUP is 4 or 8");
constexpr int EPV = 16;  // e4m3 weights a 16-byte vector

// PRO_*, EPI_*, WScales, load_stream, round_t, load_input, e4m3_raw, e4m3x4_to_f16x2:
// common.cuh.

// The row of W at position c of the CTA's sequence, or -1 where there is none. Without silu c
// itself, below col_end. With silu a group of FG positions is gate rows j .. j + FG/2 - 1 then
// the up rows of the same outputs (up j is row n/2 + j), j = (c / FG) * FG/2 + c % (FG/2),
// while j < n / 2: a CTA's positions are whole groups (cols_per_cta a multiple of FG), and the
// last group of the matrix may hold fewer outputs than FG/2.
template <int EPI>
__device__ __forceinline__ int fp8_row(int c, int n, int col_end) {
    if (EPI != EPI_SILU) return c < col_end ? c : -1;
    constexpr int H = FG / 2;
    const int j = (c / FG) * H + (c % H);
    if (j >= n / 2) return -1;
    return (c % FG) >= H ? n / 2 + j : j;
}

// p += sum_i decode(code_i) * x[i] over the 4 codes of `word` in k order (fused multiply-adds);
// with sm_89's conversion instruction the decoded values are the codes' own, else e4m3_raw's
// (2^-120 of them).
__device__ __forceinline__ void dot4(unsigned word, const float (&x)[4], float& p) {
#if FP8_GEMV_DECODE_CVT
    unsigned lo, hi;
    e4m3x4_to_f16x2(word, lo, hi);
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&lo));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&hi));
    p += a.x * x[0];
    p += a.y * x[1];
    p += b.x * x[2];
    p += b.y * x[3];
#else
#pragma unroll
    for (int i = 0; i < 4; ++i) p += e4m3_raw((word >> (8 * i)) & 0xffu) * x[i];
#endif
}

// A vector's sum of dot4s as the sum of the codes' values: itself where dot4 decodes them
// exactly, else times 2^120 (exact; then times the scale, as gemv.cu does, so that a scale
// times 2^120 never overflows).
__device__ __forceinline__ float code_sum(float p) {
#if FP8_GEMV_DECODE_CVT
    return p;
#else
    return p * E4M3_RAW_SCALE;
#endif
}

// Reduce-scatter of FG values across the warp, in warp_sum's butterfly (xor 16, 8, 4, 2, 1):
// the steps on the top log2(FG) lane bits halve the values a lane carries, the rest add. Lane l
// ends with the warp's sum of value l / (32 / FG) (as do the other lanes of its 32 / FG).
__device__ __forceinline__ float warp_reduce_scatter(float (&v)[FG], int lane) {
    int bit = 16;
#pragma unroll
    for (int half = FG / 2; half >= 1; half /= 2, bit /= 2) {
        const bool upper = lane & bit;
#pragma unroll
        for (int i = 0; i < half; ++i) {
            const float send = upper ? v[i] : v[i + half];
            const float keep = upper ? v[i + half] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, bit);
        }
    }
#pragma unroll
    for (; bit >= 1; bit /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], bit);
    return v[0];
}
constexpr int SCATTER_LANES = 32 / FG;  // lanes that end with the same sum

// RS (FP8_GEMV_ROWSCALE's variant, for matrices with one scale per row): the scale is applied
// once to each output's whole sum instead of to each vector's, so the group's loads carry no
// scales (the sums then differ from *_fp8_m1's in the last bits).
template <int PRO, int EPI, bool RS = false>
__device__ __forceinline__ void gemv_fp8(const unsigned char* __restrict__ W, WScales ws,
                                         const T* __restrict__ x, const T* __restrict__ nw,
                                         const T* __restrict__ bias, void* __restrict__ out,
                                         int n, int k, int cols_per_cta, float eps) {
    __shared__ float s_part[GEMV_WARPS];
    __shared__ float s_red[2][GEMV_WARPS][FG];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kv = k / EPV;  // 16-byte vectors a row of W
    const int col0 = blockIdx.x * cols_per_cta;
    const int col_end = min(col0 + cols_per_cta, n);
    if (col0 >= col_end) return;

    // w[g]: W[row(c0 + g), 16 v ..], wsc[g] its scale; zeros outside the matrix.
    Vec w[FG];
    float wsc[FG];
    auto load_w = [&](int c0, int v) {
#pragma unroll
        for (int g = 0; g < FG; ++g) {
            const int row = fp8_row<EPI>(c0 + g, n, col_end);
            const bool in = row >= 0 && v < kv;
            w[g] = in ? load_stream(W + (long long)row * k + (long long)v * EPV)
                      : make_uint4(0, 0, 0, 0);
            if (!RS)
                wsc[g] = in ? __ldg(ws.s + (row >> ws.srow_shift) * ws.s_ld +
                                    ((v * EPV) >> ws.scol_shift))
                            : 0.0f;
        }
    };
    // v0: the group's first vector this step, the same in every thread (so that every thread
    // ends a group at the same step and meets the same barriers); a thread's is v0 + tid.
    int c0 = col0, v0 = 0;
    load_w(c0, tid);  // the weights depend on no kernel: load them before waiting for one
    pdl_begin();

    float inv_rms = 1.0f;
    if (PRO == PRO_NORM) {
        float ss = 0.0f;
        for (int i = tid; i < k / VEC; i += GEMV_THREADS) {
            float f[VEC];
            vec_to_float(load_vec(x + i * VEC), f);
#pragma unroll
            for (int j = 0; j < VEC; ++j) ss += f[j] * f[j];
        }
        ss = warp_sum(ss);
        if (lane == 0) s_part[warp] = ss;
        __syncthreads();
        float total = 0.0f;
#pragma unroll
        for (int i = 0; i < GEMV_WARPS; ++i) total += s_part[i];
        inv_rms = rsqrtf(total / (float)k + eps);
    }
    // xin of the vector v as two vectors of T (every xin is a T value: x itself, or the norm's
    // rounded product).
    auto load_x = [&](int v, Vec (&xv)[2]) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float f[VEC];
            load_input<PRO>(x, nw, 0, k, v * EPV + h * VEC, inv_rms, f);
            xv[h] = float_to_vec(f);
        }
    };
    // Where a thread reads one vector of each row (kv <= threads), its xin is the same for
    // every group: kept in 8 registers.
    const bool cached = FP8_GEMV_XCACHE && kv <= GEMV_THREADS;
    Vec xc[2];
    if (cached && tid < kv) load_x(tid, xc);

    float acc[FG];
#pragma unroll
    for (int g = 0; g < FG; ++g) acc[g] = 0.0f;
    int parity = 0;
    while (c0 < col_end) {
        if (v0 + tid < kv) {
            Vec xv[2];
            if (cached) {
                xv[0] = xc[0], xv[1] = xc[1];
            } else {
                load_x(v0 + tid, xv);
            }
            // Word by word (4 k), every row: the rows' sums run in k order, as gemv.cu's, with
            // 4 values of x live rather than 16.
            float part[FG];
#pragma unroll
            for (int g = 0; g < FG; ++g) part[g] = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const T* xe = reinterpret_cast<const T*>(&xv[j / 2]) + 4 * (j % 2);
                const float xf[4] = {to_float(xe[0]), to_float(xe[1]), to_float(xe[2]),
                                     to_float(xe[3])};
#pragma unroll
                for (int g = 0; g < FG; ++g) {
                    const unsigned word = j == 0   ? w[g].x
                                          : j == 1 ? w[g].y
                                          : j == 2 ? w[g].z
                                                   : w[g].w;
                    dot4(word, xf, part[g]);
                }
            }
#pragma unroll
            for (int g = 0; g < FG; ++g) {
                if (RS)
                    acc[g] += code_sum(part[g]);
                else
                    acc[g] += code_sum(part[g]) * wsc[g];
            }
        }
        // Next vectors of W: the rest of this group's rows, or the next group's.
        v0 += GEMV_THREADS;
        const bool group_done = v0 >= kv;
        const int next_c0 = group_done ? c0 + FG : c0;
        if (group_done) v0 = 0;
        if (next_c0 < col_end) load_w(next_c0, v0 + tid);
        if (group_done) {
            const float s = warp_reduce_scatter(acc, lane);
            if (lane % SCATTER_LANES == 0) s_red[parity][warp][lane / SCATTER_LANES] = s;
#pragma unroll
            for (int g = 0; g < FG; ++g) acc[g] = 0.0f;
            __syncthreads();
            if (EPI == EPI_SILU) {
                // Thread g pairs gate row g of the group with up row g.
                if (tid < FG / 2 && fp8_row<EPI>(c0 + tid, n, col_end) >= 0) {
                    float sg = 0.0f, su = 0.0f;
#pragma unroll
                    for (int i = 0; i < GEMV_WARPS; ++i) {
                        sg += s_red[parity][i][tid];
                        su += s_red[parity][i][tid + FG / 2];
                    }
                    if (RS) {
                        sg *= __ldg(ws.s + fp8_row<EPI>(c0 + tid, n, col_end));
                        su *= __ldg(ws.s + fp8_row<EPI>(c0 + tid + FG / 2, n, col_end));
                    }
                    const float gate = round_t(sg), up = round_t(su);
                    const int o = c0 / 2 + tid;
                    static_cast<T*>(out)[o] = from_float(gate / (1.0f + expf(-gate)) * up);
                }
            } else if (tid < FG && c0 + tid < col_end) {
                const int col = c0 + tid;
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < GEMV_WARPS; ++i) s += s_red[parity][i][tid];
                if (RS) s *= __ldg(ws.s + col);
                if (EPI == EPI_ADD) {
                    T* y = static_cast<T*>(out);
                    y[col] = from_float(to_float(y[col]) + round_t(s));
                } else {
                    if (bias != nullptr) s += to_float(bias[col]);
                    if (EPI == EPI_F32)
                        static_cast<float*>(out)[col] = s;
                    else
                        static_cast<T*>(out)[col] = from_float(s);
                }
            }
            parity ^= 1;
        }
        c0 = next_c0;
    }
}

// gemv_<prologue>_<epilogue>_fp8v2_m1: the arguments of gemv.cu's *_fp8_m1 (rows must be 1).
#define GEMV_FP8_ENTRY(NAME, PRO, EPI)                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, FP8_GEMV_CTAS)                   \
        NAME##_fp8v2_m1(const unsigned char* __restrict__ W, const float* __restrict__ ws,       \
                        int srow_shift, int scol_shift, int s_ld, const T* __restrict__ x,      \
                        const T* __restrict__ nw, const T* __restrict__ bias,                   \
                        void* __restrict__ out, int rows, int n, int k, int cols_per_cta,       \
                        float eps) {                                                            \
        (void)rows;                                                                             \
        const WScales s{ws, srow_shift, scol_shift, s_ld};                                      \
        if (FP8_GEMV_ROWSCALE && srow_shift == 0 && scol_shift >= 31 && s_ld == 1)              \
            gemv_fp8<PRO, EPI, true>(W, s, x, nw, bias, out, n, k, cols_per_cta, eps);          \
        else                                                                                    \
            gemv_fp8<PRO, EPI>(W, s, x, nw, bias, out, n, k, cols_per_cta, eps);                \
    }

GEMV_FP8_ENTRY(gemv_plain_store, PRO_PLAIN, EPI_STORE)
GEMV_FP8_ENTRY(gemv_plain_f32, PRO_PLAIN, EPI_F32)
GEMV_FP8_ENTRY(gemv_plain_add, PRO_PLAIN, EPI_ADD)
GEMV_FP8_ENTRY(gemv_norm_store, PRO_NORM, EPI_STORE)
GEMV_FP8_ENTRY(gemv_norm_f32, PRO_NORM, EPI_F32)
GEMV_FP8_ENTRY(gemv_norm_silu, PRO_NORM, EPI_SILU)
