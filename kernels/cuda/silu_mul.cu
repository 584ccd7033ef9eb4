// SwiGLU activation: out[r, j] = silu(gate[r, j]) * up[r, j], silu(g) = g / (1 + exp(-g)),
// where gate = x[r, 0:n] and up = x[r, n:2n] (the fused gate/up projection's output).
//
// Layout: x [rows, 2n] T, out [rows, n] T; row-major.
// Launch: grid = (ceil(n / (8 * 256)), rows), block = 256; one 16-byte vector per thread.
// Numerics: fp32 throughout, one rounding to T (torch rounds silu(g) to T before the product,
// so results may differ from it by one ulp). n is a multiple of 8.
extern "C" __global__ void __launch_bounds__(256)
silu_mul(const T* __restrict__ x, T* __restrict__ out, int n) {
    pdl_begin();
    const int j = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
    if (j >= n) return;
    const long long r = blockIdx.y;
    const T* row = x + r * 2 * n;
    float g[VEC], u[VEC], y[VEC];
    vec_to_float(load_vec(row + j), g);
    vec_to_float(load_vec(row + n + j), u);
#pragma unroll
    for (int i = 0; i < VEC; ++i) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    store_vec(out + r * n + j, float_to_vec(y));
}
