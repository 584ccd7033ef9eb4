// Rotary position embedding of q and k in place, fused with the write of k and v into the
// paged KV cache.
//
// RoPE, rotate-half convention (GPT-NeoX / transformers' apply_rotary_pos_emb): for every q and
// k head x and i < HALF = HEAD_DIM / 2, with a = positions[r] * inv_freq[i] (fp32),
//   x'[i]        = x[i] * cos(a) - x[i + HALF] * sin(a),
//   x'[i + HALF] = x[i + HALF] * cos(a) + x[i] * sin(a).
// cos/sin are full-precision sincosf in fp32 and each output is rounded once (transformers
// rounds cos, sin and both products to the activation dtype first, so it differs by an ulp or
// two). Scaled RoPE variants (llama3, linear) live in inv_freq, which the host computes.
//
// Cache write: slot s = slot_mapping[r]; for each kv head g and d < HEAD_DIM,
//   k_cache[(s * NUM_KV_HEADS + g) * HEAD_DIM + d] = rotated k, v_cache[...] = v,
// i.e. caches [num_blocks, KV_BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] with s = block * KV_BLOCK_SIZE
// + offset (one layer's base pointers). Rows with s < 0 (padding) skip the write. With KV_FP8 the
// caches hold e4m3 codes of the rounded (T) k and v divided by k_scale and v_scale
// (torch: (k / k_scale).to(float8_e4m3fn), saturating at +-448); otherwise the scales are unused.
//
// Layout: qkv [rows, qkv_width] T row-major: NUM_HEADS q heads, NUM_KV_HEADS k heads,
// NUM_KV_HEADS v heads, each HEAD_DIM wide; positions, slot_mapping [rows] i32; inv_freq [HALF].
// Launch: grid = rows, block = 128. The CTA computes the HALF (cos, sin) pairs of its row once
// into shared memory; each thread then rotates 16-byte vector pairs (x[i..i+8], x[i+HALF..])
// and copies v, vector by vector.
constexpr int ROPE_HALF = HEAD_DIM / 2;
constexpr int ROPE_VECS_PER_HEAD = ROPE_HALF / VEC;  // vector pairs to rotate in one head
static_assert(ROPE_HALF % VEC == 0, "rope_cache_write: HEAD_DIM must be a multiple of 16");

// Stores the 8 values of `v` at `dst` in the cache: as they are, or as e4m3 codes of v / scale.
__device__ __forceinline__ void store_kv(KV* dst, Vec v, float scale) {
#ifdef KV_FP8
    float f[VEC];
    vec_to_float(v, f);
    unsigned lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo |= float_to_e4m3(__fdiv_rn(f[i], scale)) << (8 * i);
        hi |= float_to_e4m3(__fdiv_rn(f[i + 4], scale)) << (8 * i);
    }
    *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
#else
    store_vec(dst, v);
#endif
}

extern "C" __global__ void __launch_bounds__(128)
rope_cache_write(T* __restrict__ qkv, const int* __restrict__ positions,
                 const int* __restrict__ slot_mapping, const float* __restrict__ inv_freq,
                 KV* __restrict__ k_cache, KV* __restrict__ v_cache, int qkv_width,
                 float k_scale, float v_scale) {
    pdl_begin();
    __shared__ float cos_a[ROPE_HALF], sin_a[ROPE_HALF];
    const int r = blockIdx.x;
    const float pos = (float)positions[r];
    for (int i = threadIdx.x; i < ROPE_HALF; i += blockDim.x)
        sincosf(pos * inv_freq[i], &sin_a[i], &cos_a[i]);
    __syncthreads();

    T* row = qkv + (long long)r * qkv_width;
    const long long slot = slot_mapping[r];
    constexpr int ROTATED_HEADS = NUM_HEADS + NUM_KV_HEADS;
    for (int item = threadIdx.x; item < ROTATED_HEADS * ROPE_VECS_PER_HEAD; item += blockDim.x) {
        const int head = item / ROPE_VECS_PER_HEAD;
        const int i = (item % ROPE_VECS_PER_HEAD) * VEC;
        T* x = row + head * HEAD_DIM;
        float x1[VEC], x2[VEC], y1[VEC], y2[VEC];
        vec_to_float(load_vec(x + i), x1);
        vec_to_float(load_vec(x + i + ROPE_HALF), x2);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            const float c = cos_a[i + j], s = sin_a[i + j];
            y1[j] = x1[j] * c - x2[j] * s;
            y2[j] = x2[j] * c + x1[j] * s;
        }
        const Vec v1 = float_to_vec(y1), v2 = float_to_vec(y2);
        store_vec(x + i, v1);
        store_vec(x + i + ROPE_HALF, v2);
        if (head >= NUM_HEADS && slot >= 0) {
            KV* k = k_cache + (slot * NUM_KV_HEADS + (head - NUM_HEADS)) * HEAD_DIM;
            store_kv(k + i, v1, k_scale);
            store_kv(k + i + ROPE_HALF, v2, k_scale);
        }
    }

    if (slot < 0) return;
    const T* v = row + (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM;
    KV* v_dst = v_cache + slot * NUM_KV_HEADS * HEAD_DIM;
    for (int c = threadIdx.x * VEC; c < NUM_KV_HEADS * HEAD_DIM; c += blockDim.x * VEC)
        store_kv(v_dst + c, load_vec(v + c), v_scale);
}
