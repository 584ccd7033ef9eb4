// Paged attention for any set of query rows (used for decode): each row attends causally to its
// sequence's keys 0..=row_pos[r] in the paged KV cache. GQA-aware: one CTA serves the
// GROUP = NUM_HEADS / NUM_KV_HEADS query heads of one kv head and reads each K/V vector once.
//
//   out[r, h, :] = softmax_p(scale * q[r, h, :] . k[p, h / GROUP, :]) @ v[p, h / GROUP, :],
//   p = 0..=row_pos[r], keys of sequence row_seq[r]. Rows with row_pos[r] < 0 get zeros.
//
// Layout:
//   qkv [rows, qkv_width] T: q head h at column h * HEAD_DIM (already rotated).
//   k_cache, v_cache [num_blocks, KV_BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] T; key p of sequence s
//     is at block block_tables[s * max_blocks_per_seq + p / KV_BLOCK_SIZE], offset
//     p % KV_BLOCK_SIZE.
//   out [rows, NUM_HEADS * HEAD_DIM] T.
//   paged_attention_split also writes partial_out [rows, num_splits, NUM_HEADS, HEAD_DIM] f32
//   (each split's normalized output) and partial_lse [rows, num_splits, NUM_HEADS] f32 (its
//   natural-log sum of exp(score); -inf for an empty split), which paged_attention_combine
//   reduces into out.
//
// Launch:
//   paged_attention         grid (rows, NUM_KV_HEADS), block 128.
//   paged_attention_split   grid (rows, NUM_KV_HEADS, num_splits), block 128; split s covers
//                           keys [s * chunk, min((s + 1) * chunk, len)), len = row_pos[r] + 1,
//                           chunk = ceil(len / num_splits) rounded up to KV_BLOCK_SIZE. Its
//                           `out` is not written (the arguments mirror paged_attention's).
//   paged_attention_combine grid (rows, NUM_HEADS), block HEAD_DIM.
//
// Work split inside a CTA: a key is handled by a lane group of LANES_PER_KEY lanes, lane c of
// the group holding 16-byte vector c of the key's K and V row (HEAD_DIM / 8 vectors). The 4
// warps hold KEY_SLOTS such groups; slot i takes keys i, i + KEY_SLOTS, ... and keeps its own
// online-softmax state (max m, sum l, unnormalized output acc) for every query head of the
// group, UNROLL keys per step so that several loads are in flight. Slots merge at the end:
// within a warp by shuffles, across warps through shared memory. Scores live in the log2
// domain (q is pre-scaled by scale * log2(e)) so that exp2f does the exponentials.
// Numerics: fp32 scores, softmax and accumulation; the output is rounded to T once.
// Groups larger than MAX_PASS_HEADS heads run in several passes over the keys (the second pass
// mostly hits L2) to keep q and acc in registers.

constexpr int GROUP = NUM_HEADS / NUM_KV_HEADS;
static_assert(NUM_HEADS % NUM_KV_HEADS == 0, "NUM_HEADS must be a multiple of NUM_KV_HEADS");
static_assert(HEAD_DIM % VEC == 0 && HEAD_DIM <= 256, "HEAD_DIM must be a multiple of 8, <= 256");

constexpr int pow2_ceil(int x) { return x <= 1 ? 1 : 2 * pow2_ceil((x + 1) / 2); }

constexpr int ATTN_THREADS = 128;
constexpr int ATTN_WARPS = ATTN_THREADS / 32;
constexpr int HEAD_VECS = HEAD_DIM / VEC;
constexpr int LANES_PER_KEY = pow2_ceil(HEAD_VECS);
constexpr int KEYS_PER_WARP = 32 / LANES_PER_KEY;
constexpr int KEY_SLOTS = ATTN_WARPS * KEYS_PER_WARP;
constexpr int MAX_PASS_HEADS = 8;
constexpr int PASSES = (GROUP + MAX_PASS_HEADS - 1) / MAX_PASS_HEADS;
constexpr int PASS_HEADS = (GROUP + PASSES - 1) / PASSES;
constexpr int UNROLL = PASS_HEADS <= 4 ? 4 : 2;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Rescale factor exp2(m - m_new) that also covers "no finite score yet" (m = m_new = -inf).
__device__ __forceinline__ float softmax_base(float m_new) {
    return m_new == -INFINITY ? 0.0f : m_new;
}

// Attends query heads 0..GROUP-1 of kv head kv_head (q_group points at the first one's q in
// the qkv row) to keys [begin, end) of the sequence whose block table row is block_table.
// Calls emit(h, c, m, l, acc) once per head h < GROUP and vector c < HEAD_VECS with the merged
// state: m the log2-domain max score, l the sum of exp2(score - m), acc[8] the matching
// unnormalized output dims c*8 .. c*8+7. begin, end and the outcome are uniform over the CTA.
template <typename Emit>
__device__ __forceinline__ void attend(const T* __restrict__ q_group,
                                       const T* __restrict__ k_cache,
                                       const T* __restrict__ v_cache,
                                       const int* __restrict__ block_table, int kv_head,
                                       int begin, int end, float scale, Emit emit) {
    __shared__ float merge_m[ATTN_WARPS][PASS_HEADS];
    __shared__ float merge_l[ATTN_WARPS][PASS_HEADS];
    __shared__ float merge_acc[ATTN_WARPS][PASS_HEADS][HEAD_DIM];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = lane % LANES_PER_KEY;  // this lane's vector within a K/V row
    const bool active = c < HEAD_VECS;    // false only when HEAD_VECS is not a power of two
    const int slot = warp * KEYS_PER_WARP + lane / LANES_PER_KEY;
    const float q_scale = scale * LOG2E;

    for (int pass = 0; pass < PASSES; ++pass) {
        const int head0 = pass * PASS_HEADS;
        float q[PASS_HEADS][VEC], acc[PASS_HEADS][VEC], m[PASS_HEADS], l[PASS_HEADS];
#pragma unroll
        for (int h = 0; h < PASS_HEADS; ++h) {
            Vec qv = make_uint4(0, 0, 0, 0);
            if (active && head0 + h < GROUP)
                qv = load_vec(q_group + (head0 + h) * HEAD_DIM + c * VEC);
            vec_to_float(qv, q[h]);
#pragma unroll
            for (int j = 0; j < VEC; ++j) q[h][j] *= q_scale, acc[h][j] = 0.0f;
            m[h] = -INFINITY;
            l[h] = 0.0f;
        }

        for (int base = begin; base < end; base += UNROLL * KEY_SLOTS) {
            float k[UNROLL][VEC], v[UNROLL][VEC];
            bool valid[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int t = base + u * KEY_SLOTS + slot;
                valid[u] = t < end;
                Vec kv = make_uint4(0, 0, 0, 0), vv = kv;
                if (valid[u] && active) {
                    const long long block = block_table[t / KV_BLOCK_SIZE];
                    const long long token = block * KV_BLOCK_SIZE + t % KV_BLOCK_SIZE;
                    const long long off = (token * NUM_KV_HEADS + kv_head) * HEAD_DIM + c * VEC;
                    kv = load_vec(k_cache + off);
                    vv = load_vec(v_cache + off);
                }
                vec_to_float(kv, k[u]);
                vec_to_float(vv, v[u]);
            }
#pragma unroll
            for (int h = 0; h < PASS_HEADS; ++h) {
                float s[UNROLL], m_new = m[h];
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) {
                    float dot = 0.0f;
#pragma unroll
                    for (int j = 0; j < VEC; ++j) dot += q[h][j] * k[u][j];
#pragma unroll
                    for (int o = LANES_PER_KEY / 2; o > 0; o >>= 1)
                        dot += __shfl_xor_sync(0xffffffffu, dot, o);
                    s[u] = valid[u] ? dot : -INFINITY;
                    m_new = fmaxf(m_new, s[u]);
                }
                const float base_m = softmax_base(m_new);
                const float corr = exp2f(m[h] - base_m);
                l[h] *= corr;
#pragma unroll
                for (int j = 0; j < VEC; ++j) acc[h][j] *= corr;
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) {
                    const float p = exp2f(s[u] - base_m);
                    l[h] += p;
#pragma unroll
                    for (int j = 0; j < VEC; ++j) acc[h][j] += p * v[u][j];
                }
                m[h] = m_new;
            }
        }

        // Merge the key slots of this warp: lanes holding the same vector c, LANES_PER_KEY apart.
#pragma unroll
        for (int h = 0; h < PASS_HEADS; ++h) {
#pragma unroll
            for (int o = LANES_PER_KEY; o < 32; o <<= 1) {
                const float m_other = __shfl_xor_sync(0xffffffffu, m[h], o);
                const float l_other = __shfl_xor_sync(0xffffffffu, l[h], o);
                const float m_new = fmaxf(m[h], m_other);
                const float base_m = softmax_base(m_new);
                const float a = exp2f(m[h] - base_m), b = exp2f(m_other - base_m);
                l[h] = l[h] * a + l_other * b;
#pragma unroll
                for (int j = 0; j < VEC; ++j)
                    acc[h][j] = acc[h][j] * a + __shfl_xor_sync(0xffffffffu, acc[h][j], o) * b;
                m[h] = m_new;
            }
        }
        if (lane < LANES_PER_KEY && active) {
#pragma unroll
            for (int h = 0; h < PASS_HEADS; ++h) {
                if (c == 0) merge_m[warp][h] = m[h], merge_l[warp][h] = l[h];
#pragma unroll
                for (int j = 0; j < VEC; ++j) merge_acc[warp][h][c * VEC + j] = acc[h][j];
            }
        }
        __syncthreads();

        // Merge the warps: one (head, vector) per thread.
        for (int item = threadIdx.x; item < PASS_HEADS * HEAD_VECS; item += ATTN_THREADS) {
            const int h = item / HEAD_VECS, vc = item % HEAD_VECS;
            if (head0 + h >= GROUP) break;
            float m_all = -INFINITY;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; ++w) m_all = fmaxf(m_all, merge_m[w][h]);
            const float base_m = softmax_base(m_all);
            float l_all = 0.0f, out[VEC] = {};
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; ++w) {
                const float a = exp2f(merge_m[w][h] - base_m);
                l_all += merge_l[w][h] * a;
#pragma unroll
                for (int j = 0; j < VEC; ++j) out[j] += merge_acc[w][h][vc * VEC + j] * a;
            }
            emit(head0 + h, vc, m_all, l_all, out);
        }
        __syncthreads();  // merge_* are reused by the next pass
    }
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
paged_attention(const T* __restrict__ qkv, const T* __restrict__ k_cache,
                const T* __restrict__ v_cache, T* __restrict__ out,
                const int* __restrict__ row_seq, const int* __restrict__ row_pos,
                const int* __restrict__ block_tables, int max_blocks_per_seq, int qkv_width,
                float scale) {
    const int r = blockIdx.x, kv_head = blockIdx.y;
    const int len = max(row_pos[r] + 1, 0);  // padding rows attend to nothing and write zeros
    const T* q_group = qkv + (long long)r * qkv_width + kv_head * GROUP * HEAD_DIM;
    const int* block_table = block_tables + (long long)row_seq[r] * max_blocks_per_seq;
    T* out_group = out + (long long)r * NUM_HEADS * HEAD_DIM + kv_head * GROUP * HEAD_DIM;
    attend(q_group, k_cache, v_cache, block_table, kv_head, 0, len, scale,
           [&](int h, int c, float, float l, float (&acc)[VEC]) {
               const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
               for (int j = 0; j < VEC; ++j) acc[j] *= inv_l;
               store_vec(out_group + h * HEAD_DIM + c * VEC, float_to_vec(acc));
           });
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
paged_attention_split(const T* __restrict__ qkv, const T* __restrict__ k_cache,
                      const T* __restrict__ v_cache, T* __restrict__ out,
                      const int* __restrict__ row_seq, const int* __restrict__ row_pos,
                      const int* __restrict__ block_tables, int max_blocks_per_seq,
                      int qkv_width, float scale, float* __restrict__ partial_out,
                      float* __restrict__ partial_lse, int num_splits) {
    const int r = blockIdx.x, kv_head = blockIdx.y, split = blockIdx.z;
    const int len = max(row_pos[r] + 1, 0);
    const int per_split = (len + num_splits - 1) / num_splits;
    const int chunk = (per_split + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
    const int begin = min(split * chunk, len), end = min(begin + chunk, len);
    const T* q_group = qkv + (long long)r * qkv_width + kv_head * GROUP * HEAD_DIM;
    const int* block_table = block_tables + (long long)row_seq[r] * max_blocks_per_seq;
    const long long head_base = ((long long)r * num_splits + split) * NUM_HEADS + kv_head * GROUP;
    attend(q_group, k_cache, v_cache, block_table, kv_head, begin, end, scale,
           [&](int h, int c, float m, float l, float (&acc)[VEC]) {
               const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
               float* part = partial_out + (head_base + h) * HEAD_DIM + c * VEC;
               float4* dst = reinterpret_cast<float4*>(part);
               dst[0] = make_float4(acc[0] * inv_l, acc[1] * inv_l, acc[2] * inv_l, acc[3] * inv_l);
               dst[1] = make_float4(acc[4] * inv_l, acc[5] * inv_l, acc[6] * inv_l, acc[7] * inv_l);
               if (c == 0) partial_lse[head_base + h] = l > 0.0f ? (m + log2f(l)) * LN2 : -INFINITY;
           });
}

extern "C" __global__ void __launch_bounds__(256)
paged_attention_combine(const float* __restrict__ partial_out,
                        const float* __restrict__ partial_lse, T* __restrict__ out,
                        int num_splits) {
    const int r = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const float* lse = partial_lse + (long long)r * num_splits * NUM_HEADS + h;
    const float* part = partial_out + ((long long)r * num_splits * NUM_HEADS + h) * HEAD_DIM + d;
    float lse_max = -INFINITY;
    for (int s = 0; s < num_splits; ++s) lse_max = fmaxf(lse_max, lse[s * NUM_HEADS]);
    float weight_sum = 0.0f, acc = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
        const float l = lse[s * NUM_HEADS];
        if (l == -INFINITY) continue;  // empty split (all of them for a padding row)
        const float w = expf(l - lse_max);
        weight_sum += w;
        acc += w * part[(long long)s * NUM_HEADS * HEAD_DIM];
    }
    const float result = weight_sum > 0.0f ? acc / weight_sum : 0.0f;
    out[((long long)r * NUM_HEADS + h) * HEAD_DIM + d] = from_float(result);
}
