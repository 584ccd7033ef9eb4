// Decode attention over the paged KV cache on tensor cores: each query row (one token of a
// sequence) attends causally to its sequence's keys 0..=row_pos[r]. The GQA group of a kv head
// is the M side of the MMA: the GROUP query heads sharing a kv head are the rows of one 16-row
// Q tile (zero rows pad it), so each K/V vector is read once per row and kv head, and QK^T and
// PV are mma.sync m16n8k16 (T x T -> f32) instead of per-lane dot products and shuffles.
// Decode attention moves 4 KiB of K/V per key for 16 kFLOP (Llama-3-8B): its floor is the
// memory system, and the kernel's job is to keep enough bytes in flight.
//
//   out[r, h, :] = softmax_p(scale * q[r, h, :] . k[p, h / GROUP, :]) @ v[p, h / GROUP, :],
//   p = 0..=row_pos[r], keys of sequence row_seq[r]. Rows with row_pos[r] < 0 get zeros.
//
// Layout (as prefill_attention's):
//   qkv [rows, qkv_width] T: q head h at column h * HEAD_DIM (already rotated).
//   k_cache, v_cache [num_blocks, KV_BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] T; key p of sequence s
//     is at block block_tables[s * max_blocks_per_seq + p / KV_BLOCK_SIZE], offset
//     p % KV_BLOCK_SIZE.
//   out [rows, NUM_HEADS * HEAD_DIM] T.
//   row_list [grid x] i32 (or null: row r = blockIdx.x): the rows this launch serves, so that a
//     step mixing prompts and decoding sequences runs its one-token sequences here.
//   table_width: device pointer to the block tables' row width (max_blocks_per_seq), read there
//     rather than passed by value so that a captured graph serves every width of its split count.
//   With num_splits > 1 launched (the host sizes it for the longest context the block tables
//   hold, or fixes it for a large batch), a row of len = row_pos[r] + 1 keys uses
//   used_splits(len, num_splits, *min_split_keys) of them (no split shorter than
//   *min_split_keys keys, a device value so that a captured graph follows the step's lengths;
//   the CTAs of the others return at once): split s
//   covers keys [s * chunk, min((s + 1) * chunk, len)), chunk = ceil(len / used) rounded up to
//   KV_BLOCK_SIZE, and writes partial_out [grid x, num_splits, NUM_HEADS, HEAD_DIM] f32 (its
//   normalized output) and partial_lse [grid x, num_splits, NUM_HEADS] f32 (natural-log sum of
//   exp(score); -inf for an empty split) instead of out; attention_combine reduces the used
//   splits into out. A row that uses one split writes out directly and the combine skips it.
//
// Launch:
//   decode_attention   grid (rows or len(row_list), NUM_KV_HEADS * HEAD_TILES, num_splits),
//                      block 32 (one warp).
//                      HEAD_TILES = ceil(GROUP / 16); CTA y = kv_head * HEAD_TILES + tile
//                      takes query heads tile*16 .. tile*16+15 of kv head kv_head's group.
//   attention_combine  grid (as decode_attention's x, NUM_HEADS), block HEAD_DIM; same row_list
//                      and row_pos.
//
// Inside the warp: keys go through shared memory in tiles of 16 (K and V, rows padded to
// HEAD_DIM + 8 elements so that ldmatrix is conflict-free), gathered through the block table
// with cp.async into a ring of STAGES tiles: while tile t is computed, tiles t+1 .. t+STAGES-1
// are in flight (16 KiB per warp with STAGES = 3, head_dim 128). One warp per CTA and
// 26 KiB of shared memory let 8 CTAs share an SM. Per tile: S = Q K^T (16 x 16, HEAD_DIM/16
// k-steps), FlashAttention-2's online softmax (log2 domain, exp2f, per-row running max m and
// sum l), O += P V (P rounded to T, as FlashAttention does). Numerics: fp32 scores, softmax and
// accumulation; the output is rounded to T once.
//
// With KV_FP8 (e4m3 codes in the cache, common.cuh): the ring holds the tiles' raw bytes
// (TILE_KEYS x HEAD_DIM each, 16 codes per cp.async), and each tile is decoded once into one
// K and one V tile of T in shared memory before its MMAs; k_scale is folded into the softmax
// scale and v_scale into the output. 12 KiB of ring and 8.5 KiB of decoded tiles (head_dim
// 128, STAGES 3) instead of 26 KiB; the cache's bytes per key halve. Q is loaded into the decoded
// K tile, free until the first tile is decoded.
//
// The wait (pdl_begin, common.cuh) sits after the first tiles' copies: the kernel before this
// one (RoPE and the cache write) writes only Q and each row's own key (position row_pos[r]);
// the row list, positions and block tables were uploaded with the step, and the other keys
// written by earlier steps. So the prologue gathers tiles 0 .. STAGES-2 less the row's own key
// while RoPE runs, and after the wait loads Q and that key. (A one-token row is the only row of
// its sequence in a step, so no other row of the step writes its keys.)

constexpr int GROUP = NUM_HEADS / NUM_KV_HEADS;
static_assert(NUM_HEADS % NUM_KV_HEADS == 0, "NUM_HEADS must be a multiple of NUM_KV_HEADS");
static_assert(HEAD_DIM % 16 == 0 && HEAD_DIM <= 128,
              "decode_attention supports HEAD_DIM 16..128 in steps of 16");

constexpr int TILE_HEADS = 16;  // query heads per CTA: the M of m16n8k16
constexpr int HEAD_TILES = (GROUP + TILE_HEADS - 1) / TILE_HEADS;
constexpr int TILE_KEYS = 16;  // keys per pipeline stage
// Pipeline depth; -D DECODE_STAGES overrides it (bench/attention_bench.py times 2, 3 and 4).
#ifndef DECODE_STAGES
#define DECODE_STAGES 3
#endif
constexpr int STAGES = DECODE_STAGES;
static_assert(STAGES >= 2, "the ring needs a stage in flight beside the one computed");
constexpr int STRIDE = HEAD_DIM + VEC;    // shared-memory row stride of T tiles, elements
constexpr int ROW_VECS = HEAD_DIM / VEC;  // 16-byte vectors per row of T
constexpr int ROW_CHUNKS = HEAD_DIM / KV_VEC;  // 16-byte copies per cached row
#ifdef KV_FP8
constexpr int RING_STRIDE = HEAD_DIM;  // raw e4m3 rows: decoded, never read by ldmatrix
#else
constexpr int RING_STRIDE = STRIDE;
#endif
constexpr int D_STEPS = HEAD_DIM / 16;    // k-steps of S = Q K^T
constexpr int O_TILES = HEAD_DIM / 8;     // n8 tiles of O
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
// How many of the `num_splits` launched splits a row of `len` keys uses, none shorter than
// `min_keys` keys (the host's rule: `decode_splits` in kernels.rs).
__device__ __forceinline__ int used_splits(int len, int num_splits, int min_keys) {
    return max(1, min(num_splits, (len + min_keys - 1) / min_keys));
}

// Starts copying keys key0 .. key0 + TILE_KEYS - 1 of one kv head (those at or past end
// zero-filled: a zero V row keeps masked products finite) into k_tile and v_tile
// ([TILE_KEYS][STRIDE] each); the block-table lookup serves both. Key `skip` is left alone
// (neither copied nor zeroed): the prologue passes the row's own key, which this step's RoPE
// kernel writes, to load it after the wait; -1 skips none.
__device__ __forceinline__ void load_kv(KV* k_tile, KV* v_tile, const KV* __restrict__ k_cache,
                                        const KV* __restrict__ v_cache,
                                        const int* __restrict__ block_table, int kv_head,
                                        int key0, int end, int lane, int skip = -1) {
#pragma unroll
    for (int i = lane; i < TILE_KEYS * ROW_CHUNKS; i += 32) {
        const int row = i / ROW_CHUNKS, c = i % ROW_CHUNKS, key = key0 + row;
        if (key == skip) continue;
        const bool valid = key < end;
        long long off = 0;  // not read when !valid
        if (valid) {
            const long long token =
                (long long)block_table[key / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + key % KV_BLOCK_SIZE;
            off = (token * NUM_KV_HEADS + kv_head) * HEAD_DIM + c * KV_VEC;
        }
        cp_async16(k_tile + row * RING_STRIDE + c * KV_VEC, k_cache + off, valid);
        cp_async16(v_tile + row * RING_STRIDE + c * KV_VEC, v_cache + off, valid);
    }
}

#ifdef KV_FP8
// Decodes a raw ring tile ([TILE_KEYS][HEAD_DIM] codes) into a T tile ([TILE_KEYS][STRIDE]).
__device__ __forceinline__ void decode_tile(T* dst, const KV* src, int lane) {
#pragma unroll
    for (int i = lane; i < TILE_KEYS * ROW_CHUNKS; i += 32) {
        const int row = i / ROW_CHUNKS, c = i % ROW_CHUNKS;
        Vec lo, hi;
        e4m3x16_to_vecs(*reinterpret_cast<const uint4*>(src + row * HEAD_DIM + c * 16), lo, hi);
        store_vec(dst + row * STRIDE + c * 16, lo);
        store_vec(dst + row * STRIDE + c * 16 + VEC, hi);
    }
}
#endif

extern "C" __global__ void __launch_bounds__(32)
decode_attention(const T* __restrict__ qkv, const KV* __restrict__ k_cache,
                 const KV* __restrict__ v_cache, T* __restrict__ out,
                 const int* __restrict__ row_seq, const int* __restrict__ row_pos,
                 const int* __restrict__ block_tables, const int* __restrict__ table_width,
                 int qkv_width,
                 float scale, float* __restrict__ partial_out, float* __restrict__ partial_lse,
                 int num_splits, const int* __restrict__ min_split_keys,
                 const int* __restrict__ row_list, float k_scale, float v_scale) {
    __shared__ Vec k_smem[STAGES][TILE_KEYS * RING_STRIDE * (int)sizeof(KV) / 16];
    __shared__ Vec v_smem[STAGES][TILE_KEYS * RING_STRIDE * (int)sizeof(KV) / 16];
#ifdef KV_FP8
    __shared__ Vec kd_smem[TILE_KEYS * STRIDE / VEC], vd_smem[TILE_KEYS * STRIDE / VEC];
#endif

    // Until pdl_begin() this reads only what the host uploaded for the step (row list,
    // positions, block tables) and keys that earlier steps wrote: everything but Q and the
    // row's own key, which the RoPE kernel before this one writes.
    const int r = row_list ? row_list[blockIdx.x] : blockIdx.x;
    const int kv_head = blockIdx.y / HEAD_TILES;
    const int head_tile = blockIdx.y % HEAD_TILES, split = blockIdx.z, lane = threadIdx.x;
    const int head0 = kv_head * GROUP + head_tile * TILE_HEADS;  // this CTA's first query head
    const int heads = min(TILE_HEADS, GROUP - head_tile * TILE_HEADS);
    const int len = max(row_pos[r] + 1, 0);  // padding rows attend to nothing
    const int splits = num_splits == 1 ? 1 : used_splits(len, num_splits, *min_split_keys);
    if (split >= splits) {
        pdl_begin();
        return;
    }
    const int per_split = (len + splits - 1) / splits;
    const int chunk = (per_split + KV_BLOCK_SIZE - 1) / KV_BLOCK_SIZE * KV_BLOCK_SIZE;
    const int begin = min(split * chunk, len), end = min(begin + chunk, len);
    const int num_tiles = (end - begin + TILE_KEYS - 1) / TILE_KEYS;
    const int* block_table = block_tables + (long long)row_seq[r] * *table_width;
    auto k_tile = [&](int stage) { return reinterpret_cast<KV*>(k_smem[stage]); };
    auto v_tile = [&](int stage) { return reinterpret_cast<KV*>(v_smem[stage]); };
#ifdef KV_FP8
    T* const q_tile = reinterpret_cast<T*>(kd_smem);  // free until tile 0 is decoded
#else
    T* const q_tile = k_tile(STAGES - 1);  // free until iteration 0 refills it
#endif

    // Prologue: tiles 0 .. STAGES-2 in one commit group each, less the row's own key (len - 1);
    // then, after the wait, Q (into q_tile) and that key in one more group.
    const int own = len - 1;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < num_tiles)
            load_kv(k_tile(s), v_tile(s), k_cache, v_cache, block_table, kv_head,
                    begin + s * TILE_KEYS, end, lane, own < end ? own : -1);
        cp_async_commit();
    }
    pdl_begin();
    {
        const T* q_row = qkv + (long long)r * qkv_width + head0 * HEAD_DIM;
#pragma unroll
        for (int i = lane; i < TILE_HEADS * ROW_VECS; i += 32) {
            const int h = i / ROW_VECS, c = i % ROW_VECS;
            const bool valid = h < heads;
            cp_async16(q_tile + h * STRIDE + c * VEC, valid ? q_row + h * HEAD_DIM + c * VEC : qkv,
                       valid);
        }
        const int own_tile = (own - begin) / TILE_KEYS;
        if (own >= begin && own < end && own_tile < STAGES - 1 && lane < ROW_CHUNKS) {
            const int row = (own - begin) % TILE_KEYS;
            const long long token = (long long)block_table[own / KV_BLOCK_SIZE] * KV_BLOCK_SIZE +
                                    own % KV_BLOCK_SIZE;
            const long long off = (token * NUM_KV_HEADS + kv_head) * HEAD_DIM + lane * KV_VEC;
            const int at = row * RING_STRIDE + lane * KV_VEC;
            cp_async16(k_tile(own_tile) + at, k_cache + off, true);
            cp_async16(v_tile(own_tile) + at, v_cache + off, true);
        }
        cp_async_commit();
    }
    cp_async_wait_all();  // Q and tiles 0 .. STAGES-2 landed (issued before Q: no extra wait)
    __syncwarp();
    unsigned q_frag[D_STEPS][4];
#pragma unroll
    for (int ks = 0; ks < D_STEPS; ++ks)
        ldmatrix_x4(q_frag[ks], q_tile + (lane & 15) * STRIDE + ks * 16 + (lane >> 4) * 8);

    // This thread holds rows (heads) g and g + 8 of the tile, columns 2 * tig and 2 * tig + 1 of
    // every n8 tile (the mma accumulator layout).
    const int g = lane >> 2, tig = lane & 3;
    const float scale_log2 = scale * k_scale * LOG2E;
    float o[O_TILES][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int t = 0; t < num_tiles; ++t) {
        __syncwarp();  // every lane is done reading the stage about to be refilled
        const int next = t + STAGES - 1;
        if (next < num_tiles) {
            const int stage = next % STAGES;
            load_kv(k_tile(stage), v_tile(stage), k_cache, v_cache, block_table, kv_head,
                    begin + next * TILE_KEYS, end, lane);
        }
        cp_async_commit();
        cp_async_wait<STAGES - 1>();  // tile t landed (for this lane's copies) ...
        __syncwarp();                 // ... and for every lane's
#ifdef KV_FP8
        // Every lane is done with the decoded tiles of t - 1 (the __syncwarp above).
        const T* kt = reinterpret_cast<const T*>(kd_smem);
        const T* vt = reinterpret_cast<const T*>(vd_smem);
        decode_tile(reinterpret_cast<T*>(kd_smem), k_tile(t % STAGES), lane);
        decode_tile(reinterpret_cast<T*>(vd_smem), v_tile(t % STAGES), lane);
        __syncwarp();
#else
        const T* kt = k_tile(t % STAGES);
        const T* vt = v_tile(t % STAGES);
#endif

        // S = Q K^T: 16 heads x 16 keys.
        float s[2][4] = {};
#pragma unroll
        for (int ks = 0; ks < D_STEPS; ++ks) {
            unsigned b[4];
            const int key = (lane & 7) + ((lane >> 4) << 3);
            ldmatrix_x4(b, kt + key * STRIDE + ks * 16 + ((lane >> 3) & 1) * 8);
            mma_16816(s[0], q_frag[ks], b[0], b[1]);
            mma_16816(s[1], q_frag[ks], b[2], b[3]);
        }

        // Log2 domain; keys at or past `end` (the last tile's zero fill) are masked.
        const int key0 = begin + t * TILE_KEYS;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key0 + nt * 8 + tig * 2 + (e & 1);
                s[nt][e] = key < end ? s[nt][e] * scale_log2 : -INFINITY;
            }

        // Online softmax for rows g (rr = 0) and g + 8 (rr = 1); a row's 16 scores are spread
        // over the 4 threads of a quad.
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float row_max = fmaxf(fmaxf(s[0][2 * rr], s[0][2 * rr + 1]),
                                  fmaxf(s[1][2 * rr], s[1][2 * rr + 1]));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
            const float m_new = fmaxf(m[rr], row_max);  // finite: every tile has a valid key
            const float corr = exp2f(m[rr] - m_new);
            m[rr] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                s[nt][2 * rr] = exp2f(s[nt][2 * rr] - m_new);
                s[nt][2 * rr + 1] = exp2f(s[nt][2 * rr + 1] - m_new);
                sum += s[nt][2 * rr] + s[nt][2 * rr + 1];
            }
            l[rr] = l[rr] * corr + sum;  // this thread's share; the quad is summed at the end
#pragma unroll
            for (int dt = 0; dt < O_TILES; ++dt) o[dt][2 * rr] *= corr, o[dt][2 * rr + 1] *= corr;
        }

        // O += P V: the two S accumulators are the A fragment of one k-step over the 16 keys.
        const unsigned p[4] = {pack2(s[0][0], s[0][1]), pack2(s[0][2], s[0][3]),
                               pack2(s[1][0], s[1][1]), pack2(s[1][2], s[1][3])};
#pragma unroll
        for (int dt = 0; dt < O_TILES; dt += 2) {
            unsigned b[4];
            const int key = (lane & 7) + ((lane >> 3) & 1) * 8;
            ldmatrix_x4_trans(b, vt + key * STRIDE + dt * 8 + (lane >> 4) * 8);
            mma_16816(o[dt], p, b[0], b[1]);
            mma_16816(o[dt + 1], p, b[2], b[3]);
        }
    }
    cp_async_wait_all();  // no copy may outlive the CTA's shared memory

#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        float sum = l[rr];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int h = g + rr * 8;
        if (h >= heads) continue;
        const float inv_l = sum > 0.0f ? v_scale / sum : 0.0f;
        const int head = head0 + h;
        if (splits == 1) {  // the row's only split: no combine
            T* dst = out + ((long long)r * NUM_HEADS + head) * HEAD_DIM + tig * 2;
#pragma unroll
            for (int dt = 0; dt < O_TILES; ++dt)
                *reinterpret_cast<unsigned*>(dst + dt * 8) =
                    pack2(o[dt][2 * rr] * inv_l, o[dt][2 * rr + 1] * inv_l);
        } else {
            const long long part = ((long long)blockIdx.x * num_splits + split) * NUM_HEADS + head;
            float* dst = partial_out + part * HEAD_DIM + tig * 2;
#pragma unroll
            for (int dt = 0; dt < O_TILES; ++dt)
                *reinterpret_cast<float2*>(dst + dt * 8) =
                    make_float2(o[dt][2 * rr] * inv_l, o[dt][2 * rr + 1] * inv_l);
            if (tig == 0) partial_lse[part] = sum > 0.0f ? (m[rr] + log2f(sum)) * LN2 : -INFINITY;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
attention_combine(const float* __restrict__ partial_out, const float* __restrict__ partial_lse,
                  T* __restrict__ out, int num_splits, const int* __restrict__ min_split_keys,
                  const int* __restrict__ row_list, const int* __restrict__ row_pos) {
    pdl_begin();
    const int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int r = row_list ? row_list[i] : i;
    const int splits = used_splits(max(row_pos[r] + 1, 0), num_splits, *min_split_keys);
    if (splits == 1) return;  // decode_attention wrote the row's output itself
    const float* lse = partial_lse + (long long)i * num_splits * NUM_HEADS + h;
    const float* part = partial_out + ((long long)i * num_splits * NUM_HEADS + h) * HEAD_DIM + d;
    float lse_max = -INFINITY;
    for (int s = 0; s < splits; ++s) lse_max = fmaxf(lse_max, lse[s * NUM_HEADS]);
    float weight_sum = 0.0f, acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
        const float l = lse[s * NUM_HEADS];
        if (l == -INFINITY) continue;  // empty split (all of them for a padding row)
        const float w = expf(l - lse_max);
        weight_sum += w;
        acc += w * part[(long long)s * NUM_HEADS * HEAD_DIM];
    }
    const float result = weight_sum > 0.0f ? acc / weight_sum : 0.0f;
    out[((long long)r * NUM_HEADS + h) * HEAD_DIM + d] = from_float(result);
}
