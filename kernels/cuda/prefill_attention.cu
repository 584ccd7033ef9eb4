// Causal, variable-length prefill attention over the paged KV cache, FlashAttention-2 style on
// tensor cores (mma.sync m16n8k16, T x T -> f32, operands through ldmatrix; sm_80 PTX, so the
// same source serves sm_80 and sm_90a).
//
// For sequence z, query row j < seq_query_len[z] of this step sits at qkv row
// seq_query_start[z] + j and at position p = seq_context_len[z] - seq_query_len[z] + j; it
// attends to keys 0..=p of the sequence, all of which are in the cache already (earlier chunks,
// prefix-cache hits, and this step's keys written by rope_cache_write):
//   out[row, h, :] = softmax_k(scale * q[row, h, :] . k[k, h / GROUP, :]) @ v[k, h / GROUP, :].
//
// Layout: qkv [rows, qkv_width] T (q head h at column h * HEAD_DIM); k_cache, v_cache
// [num_blocks, KV_BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] T with key k of sequence z in block
// block_tables[z * max_blocks_per_seq + k / KV_BLOCK_SIZE] at offset k % KV_BLOCK_SIZE;
// out [rows, NUM_HEADS * HEAD_DIM] T; seq_* [num_seqs] i32.
// tiles [num_tiles, 2] i32: (sequence z, first query row within it, a multiple of 64) per CTA.
// Launch: grid = (num_tiles, NUM_HEADS), block = 128. CTA (x, h) takes query rows
// tiles[x][1] .. tiles[x][1]+63 of sequence tiles[x][0] (rows past its end are skipped), head
// h. A tile list rather than a (tile, head, sequence) grid: a step that mixes one long prompt
// with many decoding sequences would otherwise launch ~a million CTAs that exit at once.
//
// Inside a CTA: warp w owns query rows w*16 .. w*16+15; its Q fragments stay in registers.
// K and V go through shared memory in tiles of 64 keys gathered from the block table with
// cp.async, V of tile j loading while S = Q K^T runs, K of tile j+1 while O += P V runs.
// The online softmax is FlashAttention-2's: per row a running max m and sum l (log2 domain,
// exp2f), O rescaled when m grows, divided by l once at the end. Only tiles that reach past
// the CTA's first query position are masked. Numerics: S and O accumulate in fp32; P is
// rounded to T to feed the second MMA (as in FlashAttention); the output is rounded once.
// Shared rows are HEAD_DIM + 8 elements apart so that the 8 rows an ldmatrix reads fall in
// distinct banks.
//
// With KV_FP8 (e4m3 codes in the cache, common.cuh) each K and V tile is copied raw into one
// staging tile (KV_TILE x HEAD_DIM codes, 8 KiB at head_dim 128: 43 KiB in all) and decoded into
// k_tile / v_tile once it has landed; the V copy then no longer overlaps S = Q K^T's decoding
// but still overlaps its MMAs. k_scale is folded into the softmax scale, v_scale into the output.

constexpr int GROUP = NUM_HEADS / NUM_KV_HEADS;
static_assert(NUM_HEADS % NUM_KV_HEADS == 0, "NUM_HEADS must be a multiple of NUM_KV_HEADS");
static_assert(HEAD_DIM % 16 == 0 && HEAD_DIM <= 128,
              "prefill_attention supports HEAD_DIM 16..128 in steps of 16");

constexpr int Q_TILE = 64;                   // query rows per CTA, 16 per warp
constexpr int KV_TILE = 64;                  // keys per shared-memory tile
constexpr int THREADS = 128;
constexpr int STRIDE = HEAD_DIM + VEC;       // shared-memory row stride, elements
constexpr int ROW_VECS = HEAD_DIM / VEC;     // 16-byte vectors per row of T
constexpr int ROW_CHUNKS = HEAD_DIM / KV_VEC;  // 16-byte copies per cached row
#ifdef KV_FP8
constexpr int LOAD_STRIDE = HEAD_DIM;  // the raw staging tile's row stride
#else
constexpr int LOAD_STRIDE = STRIDE;
#endif
constexpr int D_STEPS = HEAD_DIM / 16;       // k-steps of S = Q K^T over head_dim
constexpr int S_TILES = KV_TILE / 8;         // n8 tiles of S per warp
constexpr int O_TILES = HEAD_DIM / 8;        // n8 tiles of O per warp
constexpr float LOG2E = 1.4426950408889634f;

// Starts the copy of keys kv0 .. kv0+KV_TILE-1 of one kv head into tile ([KV_TILE][STRIDE]);
// keys at or past kv_len are zero-filled (a zero V row keeps masked products finite).
__device__ __forceinline__ void load_kv_tile(KV* tile, const KV* __restrict__ cache,
                                             const int* __restrict__ block_table, int kv_head,
                                             int kv0, int kv_len) {
    for (int i = threadIdx.x; i < KV_TILE * ROW_CHUNKS; i += THREADS) {
        const int row = i / ROW_CHUNKS, c = i % ROW_CHUNKS, key = kv0 + row;
        const bool valid = key < kv_len;
        const KV* src = cache;  // not read when !valid
        if (valid) {
            const long long token =
                (long long)block_table[key / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + key % KV_BLOCK_SIZE;
            src = cache + (token * NUM_KV_HEADS + kv_head) * HEAD_DIM + c * KV_VEC;
        }
        cp_async16(tile + row * LOAD_STRIDE + c * KV_VEC, src, valid);
    }
}

#ifdef KV_FP8
// Decodes the staging tile ([KV_TILE][HEAD_DIM] codes) into a T tile ([KV_TILE][STRIDE]).
__device__ __forceinline__ void decode_tile(T* dst, const KV* src) {
    for (int i = threadIdx.x; i < KV_TILE * ROW_CHUNKS; i += THREADS) {
        const int row = i / ROW_CHUNKS, c = i % ROW_CHUNKS;
        Vec lo, hi;
        e4m3x16_to_vecs(*reinterpret_cast<const uint4*>(src + row * HEAD_DIM + c * 16), lo, hi);
        store_vec(dst + row * STRIDE + c * 16, lo);
        store_vec(dst + row * STRIDE + c * 16 + VEC, hi);
    }
}
#endif

extern "C" __global__ void __launch_bounds__(THREADS)
prefill_attention(const T* __restrict__ qkv, const KV* __restrict__ k_cache,
                  const KV* __restrict__ v_cache, T* __restrict__ out,
                  const int* __restrict__ seq_query_start, const int* __restrict__ seq_query_len,
                  const int* __restrict__ seq_context_len, const int* __restrict__ block_tables,
                  int max_blocks_per_seq, int qkv_width, float scale,
                  const int* __restrict__ tiles, float k_scale, float v_scale) {
    pdl_begin();
    __shared__ Vec k_smem[KV_TILE * STRIDE / VEC], v_smem[KV_TILE * STRIDE / VEC];
    T* k_tile = reinterpret_cast<T*>(k_smem);
    T* v_tile = reinterpret_cast<T*>(v_smem);
#ifdef KV_FP8
    __shared__ uint4 raw_smem[KV_TILE * HEAD_DIM / 16];
    KV* const k_load = reinterpret_cast<KV*>(raw_smem);
    KV* const v_load = k_load;  // V lands after K is decoded, K after V
#else
    KV* const k_load = k_tile;
    KV* const v_load = v_tile;
#endif

    const int seq = tiles[2 * blockIdx.x], head = blockIdx.y, kv_head = head / GROUP;
    const int q_len = seq_query_len[seq];
    const int q_begin = tiles[2 * blockIdx.x + 1];  // first query row of this CTA, in the sequence
    if (q_begin >= q_len) return;
    const int q_rows = min(Q_TILE, q_len - q_begin);
    const int first_pos = seq_context_len[seq] - q_len + q_begin;  // position of row q_begin
    const int kv_len = first_pos + q_rows;  // keys 0 .. position of the CTA's last row
    const int num_tiles = (kv_len + KV_TILE - 1) / KV_TILE;
    const int* block_table = block_tables + (long long)seq * max_blocks_per_seq;
    const long long row0 = seq_query_start[seq] + q_begin;

    // Q goes through v_tile, which is free until the first V tile.
    for (int i = threadIdx.x; i < Q_TILE * ROW_VECS; i += THREADS) {
        const int row = i / ROW_VECS, c = i % ROW_VECS;
        const bool valid = row < q_rows;
        const T* src = valid ? qkv + (row0 + row) * qkv_width + head * HEAD_DIM + c * VEC : qkv;
        cp_async16(v_tile + row * STRIDE + c * VEC, src, valid);
    }
    load_kv_tile(k_load, k_cache, block_table, kv_head, 0, kv_len);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
#ifdef KV_FP8
    decode_tile(k_tile, k_load);
    __syncthreads();
#endif

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned q_frag[D_STEPS][4];
#pragma unroll
    for (int ks = 0; ks < D_STEPS; ++ks)
        ldmatrix_x4(q_frag[ks],
                    v_tile + (warp * 16 + (lane & 15)) * STRIDE + ks * 16 + (lane >> 4) * 8);
    __syncthreads();

    // This thread holds rows g and g + 8 of the warp's 16, columns 2 * tig and 2 * tig + 1 of
    // every n8 tile (the mma accumulator layout).
    const int g = lane >> 2, tig = lane & 3;
    const int pos_g = first_pos + warp * 16 + g;  // row g + 8 is at pos_g + 8
    const float scale_log2 = scale * k_scale * LOG2E;
    float o[O_TILES][4] = {};
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    for (int tile = 0; tile < num_tiles; ++tile) {
        const int kv0 = tile * KV_TILE;
        load_kv_tile(v_load, v_cache, block_table, kv_head, kv0, kv_len);
        cp_async_commit();

        // S = Q K^T for this warp's 16 rows and the tile's 64 keys.
        float s[S_TILES][4] = {};
#pragma unroll
        for (int ks = 0; ks < D_STEPS; ++ks) {
#pragma unroll
            for (int nt = 0; nt < S_TILES; nt += 2) {
                unsigned b[4];
                const int key = nt * 8 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b, k_tile + key * STRIDE + ks * 16 + ((lane >> 3) & 1) * 8);
                mma_16816(s[nt], q_frag[ks], b[0], b[1]);
                mma_16816(s[nt + 1], q_frag[ks], b[2], b[3]);
            }
        }

        // Scale into the log2 domain; mask keys after the row's position.
        const bool diagonal = kv0 + KV_TILE - 1 > first_pos;
#pragma unroll
        for (int nt = 0; nt < S_TILES; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] *= scale_log2;
                const int key = kv0 + nt * 8 + tig * 2 + (e & 1);
                if (diagonal && key > pos_g + (e >> 1) * 8) s[nt][e] = -INFINITY;
            }
        }

        // Online softmax, rows g (r = 0) and g + 8 (r = 1); a row's 64 scores are spread over
        // the 4 threads of a quad.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float row_max = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < S_TILES; ++nt)
                row_max = fmaxf(row_max, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
            const float m_new = fmaxf(m[r], row_max);
            const float base = m_new == -INFINITY ? 0.0f : m_new;  // no finite score yet
            const float corr = exp2f(m[r] - base);
            m[r] = m_new;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < S_TILES; ++nt) {
                s[nt][2 * r] = exp2f(s[nt][2 * r] - base);
                s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] - base);
                sum += s[nt][2 * r] + s[nt][2 * r + 1];
            }
            l[r] = l[r] * corr + sum;  // this thread's share; the quad is summed at the end
#pragma unroll
            for (int dt = 0; dt < O_TILES; ++dt) o[dt][2 * r] *= corr, o[dt][2 * r + 1] *= corr;
        }

        cp_async_wait_all();
        __syncthreads();  // V of this tile landed; every warp is done with K of this tile
#ifdef KV_FP8
        decode_tile(v_tile, v_load);  // every warp is done with V of the last tile
        __syncthreads();              // and the staging tile is free for K
#endif
        if (tile + 1 < num_tiles) {
            load_kv_tile(k_load, k_cache, block_table, kv_head, kv0 + KV_TILE, kv_len);
            cp_async_commit();
        }

        // O += P V: the S accumulators of key tiles 2kk, 2kk+1 are the A fragment of step kk.
#pragma unroll
        for (int kk = 0; kk < KV_TILE / 16; ++kk) {
            const unsigned p[4] = {pack2(s[2 * kk][0], s[2 * kk][1]),
                                   pack2(s[2 * kk][2], s[2 * kk][3]),
                                   pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dt = 0; dt < O_TILES; dt += 2) {
                unsigned b[4];
                const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                ldmatrix_x4_trans(b, v_tile + key * STRIDE + dt * 8 + (lane >> 4) * 8);
                mma_16816(o[dt], p, b[0], b[1]);
                mma_16816(o[dt + 1], p, b[2], b[3]);
            }
        }
        cp_async_wait_all();
        __syncthreads();  // K of the next tile landed; every warp is done with V of this tile
#ifdef KV_FP8
        if (tile + 1 < num_tiles) {
            decode_tile(k_tile, k_load);  // every warp is done with K of this tile
            __syncthreads();
        }
#endif
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv_l = sum > 0.0f ? v_scale / sum : 0.0f;
        const int row = warp * 16 + g + r * 8;
        if (row >= q_rows) continue;
        T* dst = out + (row0 + row) * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM + tig * 2;
#pragma unroll
        for (int dt = 0; dt < O_TILES; ++dt)
            *reinterpret_cast<unsigned*>(dst + dt * 8) =
                pack2(o[dt][2 * r] * inv_l, o[dt][2 * r + 1] * inv_l);
    }
}
