// FP8 (e4m3fn) rows: quantization with one scale per row, and dequantization.
//
// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; 0x7f / 0xff are NaN;
// largest finite 448, smallest subnormal 2^-9. The conversions are written out (no cuda_fp8.h)
// so that every arch the engine compiles for, sm_80 included, runs the same code; the decoding
// (e4m3_raw) is in common.cuh, for the FP8 GEMV too.
//
// fp8_quantize_rows: for each row r of x [rows, k] (T),
//   scale[r] = amax_r / 448 (1 when the row is all zeros), q[r, c] = e4m3(x[r, c] / scale[r]),
//   rounded to nearest even, saturating at ±448 (torch: (x / scale).to(torch.float8_e4m3fn)
//   after a clamp). Used at load for weights (`quantization="fp8"`: one scale per output
//   channel) and per step for the activations of an FP8 GEMM (one scale per token).
//   Launch: grid = rows, block = 256; k a multiple of 8.
//
// fp8_dequantize: out[r, c] = round_T(decode(q[r, c]) * s), s the scale of (r, c) in the layout
//   `scales[(r >> srow_shift) * s_ld + (c >> scol_shift)]` (one per row: srow_shift 0, s_ld 1,
//   scol_shift 31; 128 x 128 blocks: 7, ceil(cols / 128), 7). The prefill GEMM of an FP8 matrix
//   on a GPU without FP8 tensor cores (Ampere) reads the dequantized copy.
//   Launch: grid = rows, block = 256; cols a multiple of 16.

// Rounds |f| <= 448 (callers clamp) to the nearest e4m3 code, ties to even.
__device__ __forceinline__ unsigned float_to_e4m3(float f) {
    const unsigned sign = (__float_as_uint(f) >> 24) & 0x80u;
    const float a = fminf(fabsf(f), 448.0f);
    if (a < 0.015625f) return sign | __float2uint_rn(a * 512.0f);  // subnormal (8 = 2^-6)
    unsigned u = __float_as_uint(a);
    u += 0x7ffffu + ((u >> 20) & 1u);  // round the mantissa to 3 bits, ties to even
    const unsigned e = (u >> 23) - 120u, m = (u >> 20) & 7u;  // e - 127 + 7
    return sign | (e << 3) | m;
}

extern "C" __global__ void __launch_bounds__(256)
fp8_quantize_rows(const T* __restrict__ x, unsigned char* __restrict__ q,
                  float* __restrict__ scales, int k) {
    pdl_begin();
    const long long r = blockIdx.x;
    const T* row = x + r * k;
    float amax = 0.0f;
    for (int c = threadIdx.x * VEC; c < k; c += blockDim.x * VEC) {
        float f[VEC];
        vec_to_float(load_vec(row + c), f);
#pragma unroll
        for (int i = 0; i < VEC; ++i) amax = fmaxf(amax, fabsf(f[i]));
    }
    amax = block_max(amax);
    const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
    if (threadIdx.x == 0) scales[r] = scale;
    unsigned char* out = q + r * k;
    for (int c = threadIdx.x * VEC; c < k; c += blockDim.x * VEC) {
        float f[VEC];
        vec_to_float(load_vec(row + c), f);
        unsigned lo = 0, hi = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo |= float_to_e4m3(__fdiv_rn(f[i], scale)) << (8 * i);
            hi |= float_to_e4m3(__fdiv_rn(f[i + 4], scale)) << (8 * i);
        }
        *reinterpret_cast<uint2*>(out + c) = make_uint2(lo, hi);
    }
}

extern "C" __global__ void __launch_bounds__(256)
fp8_dequantize(const unsigned char* __restrict__ q, const float* __restrict__ scales,
               T* __restrict__ out, int cols, int srow_shift, int scol_shift, int s_ld) {
    pdl_begin();
    const long long r = blockIdx.x;
    const float* srow = scales + (long long)(r >> srow_shift) * s_ld;
    for (int c = threadIdx.x * 16; c < cols; c += blockDim.x * 16) {
        const uint4 codes = *reinterpret_cast<const uint4*>(q + r * cols + c);
        const unsigned w[4] = {codes.x, codes.y, codes.z, codes.w};
        const float s = srow[c >> scol_shift];
        float f[16];  // decode(code) * s: the decoding is exact, so one rounding, as torch's
#pragma unroll
        for (int i = 0; i < 16; ++i) f[i] = e4m3_to_float((w[i / 4] >> (8 * (i % 4))) & 0xffu) * s;
        float lo[VEC], hi[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            lo[i] = f[i];
            hi[i] = f[i + VEC];
        }
        store_vec(out + r * cols + c, float_to_vec(lo));
        store_vec(out + r * cols + c + VEC, float_to_vec(hi));
    }
}
