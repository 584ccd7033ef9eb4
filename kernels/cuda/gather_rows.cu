// Row gather: out[i, :] = x[rows[i], :] (e.g. the last position of each sequence before the
// LM head).
//
// Layout: x [*, width] T, rows [n] i32, out [n, width] T; all row-major.
// Launch: grid = n, block = 128; each thread copies 16-byte vectors with stride 128.
// Exact: a copy, no arithmetic. width is a multiple of 8.
extern "C" __global__ void __launch_bounds__(128)
gather_rows(const T* __restrict__ x, const int* __restrict__ rows, T* __restrict__ out,
            int width) {
    pdl_begin();
    const long long i = blockIdx.x;
    const T* src = x + (long long)rows[i] * width;
    T* dst = out + i * width;
    for (int c = threadIdx.x * VEC; c < width; c += blockDim.x * VEC)
        store_vec(dst + c, load_vec(src + c));
}
