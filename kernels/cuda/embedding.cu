// Embedding lookup: out[r, :] = table[ids[r], :].
//
// Layout: table [vocab, hidden] T, ids [rows] u32, out [rows, hidden] T; all row-major.
// Launch: grid = rows, block = 128; each thread copies 16-byte vectors with stride 128.
// Exact: a copy, no arithmetic. hidden is a multiple of 8; the caller checks ids < vocab.
extern "C" __global__ void __launch_bounds__(128)
embedding(const T* __restrict__ table, const unsigned* __restrict__ ids, T* __restrict__ out,
          int hidden) {
    pdl_begin();
    const long long r = blockIdx.x;
    const T* src = table + (long long)ids[r] * hidden;
    T* dst = out + r * hidden;
    for (int i = threadIdx.x * VEC; i < hidden; i += blockDim.x * VEC)
        store_vec(dst + i, load_vec(src + i));
}
