// Projections of decode steps of 1..8 rows through an FP8 weight, the products on the tensor
// cores (sm_89+: the e4m3 -> f16 conversion instruction); the same sums, prologues and
// epilogues as gemv.cu's *_fp8_m1 kernels (see its header for the math of each):
//
//   out[m, n] = epilogue( sum_k W[n, k] * xin(m, k) )        m < rows <= 8, n < N
//   W[n, k] = decode(code[n, k]) * ws[(n >> srow_shift) * s_ld + (k >> scol_shift)]
//
// Layout: W [N, K] e4m3fn codes, row-major; x [rows, K] and out as in gemv.cu. K a multiple of
// 64 and scol_shift >= 6 (one scale per row, or 128-column blocks), so that a 64-wide chunk of
// k never straddles a scale block; the host sends other matrices to gemv.cu.
//
// The product: mma.sync m16n8k16 (f16 inputs, f32 sums), 16 rows of W as A and the (up to 8)
// activation rows as B's 8 columns (zero past `rows`); the codes become f16 by one
// cvt.rn.f16x2.e4m3x2 per two (exact). k is permuted inside each 64-wide chunk kb so that a
// lane's operands are its own 16-byte loads: lane (g = lane / 4, q = lane % 4) loads W[r + g,
// kb + 16q .. +16] and W[r + g + 8, ..]; for mma step j (0..3) its A fragment is bytes 4j, 4j+1
// (a0 a1: row g; a2 a3: row g+8) and 4j+2, 4j+3 (a4 a5, a6 a7) of them, and its B fragment
// elements 4j, 4j+1 (b0 b1) and 4j+2, 4j+3 (b2 b3) of xin[g, kb + 16q .. +16]: the PTX ISA's
// fragment columns 2q, 2q+1 and 2q+8, 2q+9 of step j are k = kb + 16q + 4j + {0, 1} and
// {2, 3}, for A and B alike. A lane thus runs the prologue (gemv.cu's, same roundings) for one
// activation row over its own 16 k, once for MT x 16 rows of W.
//
// f16 range: xin is rounded to f16, exact for every bf16 or f16 value in f16's normal range.
// A bf16 input may exceed 65504: when a lane's chunk does (warp-uniform, __any_sync), each
// activation row's part of that chunk is taken times 2^-e (e >= 0, its chunk maximum then
// under 2^15; a power of two: exact but for values 2^40 below that maximum, which fall into
// f16's subnormals) and the row's sums times 2^e. f16 inputs fit by construction.
//
// Scales: each chunk's sums land in a fresh f32 fragment, added to the accumulator times the
// (row, chunk) scale (C fragment rows g, g+8; columns 2q, 2q+1 are activation rows).
//
// Work split: a CTA owns `cols_per_cta` consecutive outputs, a multiple of TILE = 16 MT rows of
// W (with silu each 16-row mma tile is 8 gate rows then the 8 matching up rows: C rows g and
// g + 8 are gate j and up j). Each TILE's K / 64 chunks are dealt round-robin to the 8 warps
// (each takes the same number of steps, some empty, so the CTA's barriers line up), then the
// warps' fragments are summed in shared memory and one thread per (row, activation row) runs
// the epilogue. A warp refills each of its U chunk slots (2 KB at MT = 2) as soon as it has
// used it, the next tile's first chunks before a tile's reduction, so 16-32 KB a CTA are in
// flight; the first loads go before pdl_begin(), as in gemv.cu (W and its scales are written
// once, at load). The host sizes cols_per_cta for one wave.
//
// Launch: grid = ceil(N / cols_per_cta), block = GEMV_THREADS (256); 1 <= rows <= 8.
// Numerics: exact products, f32 sums (the tensor cores' order within a chunk, then per chunk).

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
#error "gemv_fp8_mma.cu needs sm_89 or later (cvt.rn.f16x2.e4m3x2)"
#endif

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_WARPS = GEMV_THREADS / 32;
constexpr int MMA_ROWS = 8;  // activation rows: B's 8 columns
// The shape constants can be overridden with -D for bench/gemv_fp8_bench.py's variants; the
// engine compiles the defaults (backend/cuda/kernels/gemv.rs's FP8_MMA_TILE is TILE).
#ifndef FP8_MMA_MT
#define FP8_MMA_MT 2
#endif
#ifndef FP8_MMA_U
#define FP8_MMA_U 2
#endif
#ifndef FP8_MMA_CTAS
#define FP8_MMA_CTAS 2
#endif
constexpr int MT = FP8_MMA_MT;  // 16-row mma tiles per warp step: xin's work is shared by 32 rows
constexpr int TILE = 16 * MT;
constexpr int U = FP8_MMA_U;  // chunks of W in flight per warp
constexpr int CHUNK = 64;  // k per chunk: 4 mma steps

// PRO_*, EPI_*, WScales, load_stream, round_t, load_input and e4m3x4_to_f16x2: common.cuh.

__device__ __forceinline__ unsigned f16x2(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}

// d[16x8] += a[16x16] * b[16x8] in f16 with f32 sums (whatever T is).
__device__ __forceinline__ void mma_f16(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                        unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The W row of row i of the tile at sequence position c0 (a multiple of TILE), or -1 past the
// CTA's columns. With silu, mma tile t holds gate rows j .. j+7 then up rows n/2 + j .. +7,
// j = c0 / 2 + 8t: outputs c0 / 2 .. c0 / 2 + 8 MT - 1, valid while j < col_end / 2.
template <int EPI>
__device__ __forceinline__ int tile_row(int c0, int i, int n, int col_end) {
    if (EPI != EPI_SILU) return c0 + i < col_end ? c0 + i : -1;
    const int j = c0 / 2 + (i / 16) * 8 + (i & 7);
    if (2 * j >= col_end) return -1;
    return (i & 8) ? n / 2 + j : j;
}

// The B fragment source of lane (g, q) for the chunk at kb: xin[g, kb + 16q .. +16] times
// `mul` as 8 f16x2 (zeros for g >= rows). Returns the largest |xin| (before `mul`) with bf16
// inputs, 0 with f16 ones (they are f16 values).
template <int PRO>
__device__ __forceinline__ float load_b(const T* __restrict__ x, const T* __restrict__ nw,
                                        int g, int rows, int k, int k0, float inv_rms, float mul,
                                        unsigned (&b)[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) b[i] = 0u;
    if (g >= rows) return 0.0f;
#ifdef INFIRE_DTYPE_F16
    if (PRO == PRO_PLAIN) {  // already f16, bit for bit
        const T* xg = x + (long long)g * k + k0;
        const Vec lo = load_vec(xg), hi = load_vec(xg + VEC);
        b[0] = lo.x, b[1] = lo.y, b[2] = lo.z, b[3] = lo.w;
        b[4] = hi.x, b[5] = hi.y, b[6] = hi.z, b[7] = hi.w;
        return 0.0f;
    }
#endif
    float f[2][VEC];
    load_input<PRO>(x, nw, g, k, k0, inv_rms, f[0]);
    load_input<PRO>(x, nw, g, k, k0 + VEC, inv_rms, f[1]);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float lo = f[i / 4][(2 * i) % VEC], hi = f[i / 4][(2 * i + 1) % VEC];
        amax = fmaxf(amax, fmaxf(fabsf(lo), fabsf(hi)));
        b[i] = f16x2(lo * mul, hi * mul);
    }
#ifdef INFIRE_DTYPE_F16
    return 0.0f;
#else
    return amax;
#endif
}

// 2^e as a float, -126 <= e <= 127.
__device__ __forceinline__ float exp2i(int e) {
    return __uint_as_float((unsigned)(127 + e) << 23);
}

// The chunk's sums on the tensor cores: 4 mma steps per 16-row tile (see the header).
__device__ __forceinline__ void chunk_mma(const Vec (&w)[MT][2], const unsigned (&b)[8],
                                          float (&tmp)[MT][4]) {
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        const unsigned lo[4] = {w[t][0].x, w[t][0].y, w[t][0].z, w[t][0].w};  // row g
        const unsigned hi[4] = {w[t][1].x, w[t][1].y, w[t][1].z, w[t][1].w};  // row g + 8
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            unsigned a[4];
            e4m3x4_to_f16x2(lo[j], a[0], a[2]);
            e4m3x4_to_f16x2(hi[j], a[1], a[3]);
            mma_f16(tmp[t], a, b[2 * j], b[2 * j + 1]);
        }
    }
}

// The epilogue of tile row i (thread-owned) for activation row m, from its sum s over K
// (gemv.cu's epilogues); with silu, s is the gate's sum and `up` the matching up row's.
template <int EPI>
__device__ __forceinline__ void store_out(void* __restrict__ out, const T* __restrict__ bias,
                                          int m, int n, int col, float s, float up) {
    if (EPI == EPI_SILU) {
        const float gate = round_t(s), u = round_t(up);
        static_cast<T*>(out)[(long long)m * (n / 2) + col] =
            from_float(gate / (1.0f + expf(-gate)) * u);
        return;
    }
    const long long o = (long long)m * n + col;
    if (EPI == EPI_ADD) {
        T* y = static_cast<T*>(out);
        y[o] = from_float(to_float(y[o]) + round_t(s));
        return;
    }
    if (bias != nullptr) s += to_float(bias[col]);
    if (EPI == EPI_F32)
        static_cast<float*>(out)[o] = s;
    else
        static_cast<T*>(out)[o] = from_float(s);
}

// 1 / rms of each activation row into s_inv_rms (1 without the norm prologue), as gemv.cu.
template <int PRO>
__device__ __forceinline__ void inv_rms_rows(const T* __restrict__ x, int rows, int k, float eps,
                                             float (&s_part)[GEMV_WARPS][MMA_ROWS],
                                             float* s_inv_rms) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid < MMA_ROWS) s_inv_rms[tid] = 1.0f;
    if (PRO == PRO_NORM) {
        float ss[MMA_ROWS];
#pragma unroll
        for (int m = 0; m < MMA_ROWS; ++m) ss[m] = 0.0f;
        for (int v = tid; v < k / VEC; v += GEMV_THREADS) {
#pragma unroll
            for (int m = 0; m < MMA_ROWS; ++m) {
                if (m >= rows) break;
                float f[VEC];
                vec_to_float(load_vec(x + (long long)m * k + v * VEC), f);
#pragma unroll
                for (int i = 0; i < VEC; ++i) ss[m] += f[i] * f[i];
            }
        }
#pragma unroll
        for (int m = 0; m < MMA_ROWS; ++m) {
            if (m >= rows) break;
            ss[m] = warp_sum(ss[m]);
            if (lane == 0) s_part[warp][m] = ss[m];
        }
        __syncthreads();
        if (tid < rows) {
            float total = 0.0f;
#pragma unroll
            for (int i = 0; i < GEMV_WARPS; ++i) total += s_part[i][tid];
            s_inv_rms[tid] = rsqrtf(total / (float)k + eps);
        }
    }
    __syncthreads();
}

// The tile at c0 done: the warps' fragments summed in shared memory (s_red, this parity's
// half), then one thread per (tile row, activation row) applies the epilogue; with silu, the
// gate rows' threads, each with its up row.
template <int EPI>
__device__ __forceinline__ void finish_tile(float2 (&s_red)[GEMV_WARPS][TILE][MMA_ROWS / 2],
                                            float (&acc)[MT][4], const T* __restrict__ bias,
                                            void* __restrict__ out, int rows, int n, int c0,
                                            int col_end) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        s_red[warp][16 * t + g][q] = make_float2(acc[t][0], acc[t][1]);
        s_red[warp][16 * t + g + 8][q] = make_float2(acc[t][2], acc[t][3]);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    }
    __syncthreads();
    for (int e = tid; e < TILE * MMA_ROWS; e += GEMV_THREADS) {
        const int i = e / MMA_ROWS, m = e % MMA_ROWS;
        if (m >= rows || (EPI == EPI_SILU && (i & 8))) continue;
        const int col = EPI == EPI_SILU ? c0 / 2 + (i / 16) * 8 + (i & 7) : c0 + i;
        if ((EPI == EPI_SILU ? 2 * col : col) >= col_end) continue;
        float sum = 0.0f, up = 0.0f;
#pragma unroll
        for (int v = 0; v < GEMV_WARPS; ++v) {
            sum += reinterpret_cast<const float*>(s_red[v][i])[m];
            if (EPI == EPI_SILU) up += reinterpret_cast<const float*>(s_red[v][i + 8])[m];
        }
        store_out<EPI>(out, bias, m, n, col, sum, up);
    }
}

// The chunk's sums (fresh fragments) for lane (g, q): xin through the prologue as B, the
// weights w as A; a chunk with an input beyond f16's range is scaled per row (see the header).
template <int PRO>
__device__ __forceinline__ void chunk_sums(const Vec (&w)[MT][2], const T* __restrict__ x,
                                           const T* __restrict__ nw, int g, int q, int rows,
                                           int k, int k0, float inv_rms, float (&tmp)[MT][4]) {
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) tmp[t][i] = 0.0f;
    unsigned b[8];
    const float amax = load_b<PRO>(x, nw, g, rows, k, k0, inv_rms, 1.0f, b);
    const bool wide = __any_sync(0xffffffffu, !(amax <= 65504.0f));
    int e = 0;  // this lane's row: its inputs times 2^-e
    if (wide) {
        float rmax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
        rmax = fmaxf(rmax, __shfl_xor_sync(0xffffffffu, rmax, 2));
        // rmax < 2^(E - 126) for its biased exponent E: e = E - 141 puts it under 2^15.
        e = max(0, (int)((__float_as_uint(rmax) >> 23) & 0xffu) - 141);
        load_b<PRO>(x, nw, g, rows, k, k0, inv_rms, exp2i(-e), b);
    }
    chunk_mma(w, b, tmp);
    if (wide) {  // C columns 2q, 2q + 1 are the rows of lanes 8q and 8q + 4
        const float e0 = exp2i(__shfl_sync(0xffffffffu, e, 8 * q));
        const float e1 = exp2i(__shfl_sync(0xffffffffu, e, 8 * q + 4));
#pragma unroll
        for (int t = 0; t < MT; ++t) {
            tmp[t][0] *= e0, tmp[t][2] *= e0;
            tmp[t][1] *= e1, tmp[t][3] *= e1;
        }
    }
}

template <int PRO, int EPI>
__device__ __forceinline__ void gemv_fp8_mma(const unsigned char* __restrict__ W, WScales ws,
                                             const T* __restrict__ x,
                                             const T* __restrict__ nw,
                                             const T* __restrict__ bias, void* __restrict__ out,
                                             int rows, int n, int k, int cols_per_cta,
                                             float eps) {
    __shared__ float s_part[GEMV_WARPS][MMA_ROWS];
    __shared__ float s_inv_rms[MMA_ROWS];
    // [parity][warp][tile row][activation rows 2p, 2p + 1]: the warps' C fragments.
    __shared__ float2 s_red[2][GEMV_WARPS][TILE][MMA_ROWS / 2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int col0 = blockIdx.x * cols_per_cta;
    const int col_end = min(col0 + cols_per_cta, n);
    if (col0 >= col_end) return;
    const int chunks = k / CHUNK;
    const int steps_per_tile = (chunks + GEMV_WARPS - 1) / GEMV_WARPS;

    // Loads run U steps ahead of the products: the load cursor is (tile lc0, step li), and the
    // lane's rows of that tile start at wp (W) and sp (their scales). A row past the CTA's
    // columns reads the CTA's first row instead: its sums are never stored, and a C row
    // depends on its A row alone, so the loads need no predicate and no zeros.
    Vec w[U][MT][2] = {};
    float sc[U][MT][2] = {};
    const unsigned char* wp[MT][2];
    const float* sp[MT][2];
    int lc0 = col0, li = 0;
    auto set_rows = [&]() {
#pragma unroll
        for (int t = 0; t < MT; ++t)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int r = tile_row<EPI>(lc0, 16 * t + 8 * h + g, n, col_end);
                r = r >= 0 ? r : tile_row<EPI>(col0, 0, n, col_end);
                wp[t][h] = W + (long long)r * k + 16 * q;
                sp[t][h] = ws.s + (r >> ws.srow_shift) * ws.s_ld;
            }
    };
    auto load_w = [&](int u) {  // the cursor's chunk into slot u, then the cursor one step on
        const int chunk = warp + GEMV_WARPS * li, kb = chunk * CHUNK;
        if (chunk < chunks && lc0 < col_end) {  // warp-uniform
#pragma unroll
            for (int t = 0; t < MT; ++t)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    w[u][t][h] = load_stream(wp[t][h] + kb);
                    sc[u][t][h] = __ldg(sp[t][h] + (kb >> ws.scol_shift));
                }
        }
        if (++li == steps_per_tile) {
            li = 0;
            lc0 += TILE;
            set_rows();
        }
    };
    set_rows();
#pragma unroll
    for (int u = 0; u < U; ++u) load_w(u);  // they depend on no kernel: before the wait
    pdl_begin();
    inv_rms_rows<PRO>(x, rows, k, eps, s_part, s_inv_rms);
    const float inv_rms = s_inv_rms[g < rows ? g : 0];

    float acc[MT][4];
#pragma unroll
    for (int t = 0; t < MT; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;
    int c0 = col0, i = 0, parity = 0;  // the products' cursor
    while (c0 < col_end) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (c0 >= col_end) break;  // the same for every thread of the CTA
            const int chunk = warp + GEMV_WARPS * i;
            if (chunk < chunks) {  // warp-uniform
                float tmp[MT][4];
                chunk_sums<PRO>(w[u], x, nw, g, q, rows, k, chunk * CHUNK + 16 * q, inv_rms,
                                tmp);
#pragma unroll
                for (int t = 0; t < MT; ++t)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[t][j] += tmp[t][j] * sc[u][t][j / 2];
            }
            load_w(u);  // U steps on, before this tile's reduction
            if (++i == steps_per_tile) {
                finish_tile<EPI>(s_red[parity], acc, bias, out, rows, n, c0, col_end);
                i = 0;
                c0 += TILE;
                parity ^= 1;
            }
        }
    }
}

// One entry point per (prologue, epilogue), as gemv.cu's: gemv_<prologue>_<epilogue>_fp8mma,
// for 1..8 rows; 2 CTAs per SM (<= 128 registers: U x MT x 2 16-byte vectors in flight).
#define GEMV_FP8_MMA_ENTRY(NAME, PRO, EPI)                                                    \
    extern "C" __global__ void __launch_bounds__(GEMV_THREADS, FP8_MMA_CTAS)                  \
        NAME##_fp8mma(                                                                        \
        const unsigned char* __restrict__ W, const float* __restrict__ ws, int srow_shift,    \
        int scol_shift, int s_ld, const T* __restrict__ x, const T* __restrict__ nw,          \
        const T* __restrict__ bias, void* __restrict__ out, int rows, int n, int k,           \
        int cols_per_cta, float eps) {                                                        \
        gemv_fp8_mma<PRO, EPI>(W, WScales{ws, srow_shift, scol_shift, s_ld}, x, nw, bias, out, \
                               rows, n, k, cols_per_cta, eps);                                \
    }

GEMV_FP8_MMA_ENTRY(gemv_plain_store, PRO_PLAIN, EPI_STORE)
GEMV_FP8_MMA_ENTRY(gemv_plain_f32, PRO_PLAIN, EPI_F32)
GEMV_FP8_MMA_ENTRY(gemv_plain_add, PRO_PLAIN, EPI_ADD)
GEMV_FP8_MMA_ENTRY(gemv_norm_store, PRO_NORM, EPI_STORE)
GEMV_FP8_MMA_ENTRY(gemv_norm_f32, PRO_NORM, EPI_F32)
GEMV_FP8_MMA_ENTRY(gemv_norm_silu, PRO_NORM, EPI_SILU)
