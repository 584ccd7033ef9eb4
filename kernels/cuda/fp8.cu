// FP8 (e4m3fn) rows: quantization with one scale per row, and dequantization.
//
// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; 0x7f / 0xff are NaN;
// largest finite 448, smallest subnormal 2^-9. The conversions are written out (no cuda_fp8.h)
// so that every arch the engine compiles for, sm_80 included, runs the same code; the decoding
// (e4m3_raw) and the rounding (float_to_e4m3) are in common.cuh, for the FP8 GEMV and the FP8
// KV cache too.
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
//
// fp8_scale_out: out[r, c] = round_T(out[r, c] * a_scales[r] * w_scales[c] (+ bias[c])), in
//   place. On Hopper cuBLASLt's FP8 GEMM takes no per-row scales (kernels/cuda/NOTES.md), so
//   an FP8 projection of more than one row is the GEMM of the raw codes (scales 1, the sum
//   rounded to T: |sum| <= 448^2 * k fits bf16's range) followed by this kernel, which applies
//   the per-token and per-channel scales and the bias. Two roundings instead of one: the error
//   they add (<= 2^-8 relative, bf16) is far below the e4m3 codes' own (2^-4).
//   Launch: grid = rows, block = 256; n (out's row width) a multiple of 8; bias may be null.

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

extern "C" __global__ void __launch_bounds__(256)
fp8_scale_out(T* __restrict__ out, const float* __restrict__ a_scales,
              const float* __restrict__ w_scales, const T* __restrict__ bias, int n) {
    pdl_begin();
    const long long r = blockIdx.x;
    const float a = a_scales[r];
    T* row = out + r * n;
    for (int c = threadIdx.x * VEC; c < n; c += blockDim.x * VEC) {
        float f[VEC], b[VEC];
        vec_to_float(load_vec(row + c), f);
        if (bias != nullptr) vec_to_float(load_vec(bias + c), b);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            f[i] = f[i] * a * w_scales[c + i];
            if (bias != nullptr) f[i] += b[i];
        }
        store_vec(row + c, float_to_vec(f));
    }
}
