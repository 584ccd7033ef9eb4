// Token selection on the device: greedy argmax, and sampling with penalties, temperature,
// top-k, top-p and min-p, so that only token ids leave the GPU.
//
// Layout: logits [rows, vocab] f32 row-major; out [rows] i32.
// Launch (both kernels): grid = rows, block = 1024 (SAMPLE_THREADS). One CTA per row: every
// reduction is in a fixed order, so a row's token depends on its logits and its parameters
// only, never on the other rows of the batch.
//
// argmax(logits, vocab, out): out[r] = the lowest index among equal maxima (as torch.argmax);
// NaN ranks below every number, -inf included. Exact.
//
// sample(logits, vocab, params, penalty_tokens, masks, out): per row, in this order (the
// semantics; rust/src/sampling/filter.rs is the host reference, the tests' numpy reference a
// third copy):
//   0. a grammar's mask (structured outputs), when the row has one: every token whose bit is
//      clear gets l = -inf, in place, so that the rules below apply to the allowed tokens alone.
//   1. penalties, in place on the row's logits: for each (token, count, seen) entry of the row,
//      l = seen ? (l > 0 ? l / repetition : l * repetition) : l, then
//      l -= frequency * count + presence * (count > 0). Entries name distinct tokens.
//   2. temperature 0 (or top-k 1): the argmax, as above. Otherwise, with m the row's maximum
//      and s = (l - m) * (1 / temperature), a token is kept when its logit is at least
//      - the top-k threshold: the k-th largest logit (every token tied with it is kept),
//      - the min-p floor: m + ln(min_p) * temperature (probability >= min_p * the largest),
//      - the top-p threshold: walking the tokens kept so far from the largest logit down, the
//        logit at which their probability mass first reaches top_p of the kept mass (ties kept).
//   3. one draw among the kept tokens with probability proportional to exp(s): the exponential
//      race, argmax of s - ln(-ln u) with u uniform in (0, 1) from a counter-based hash of
//      (the row's 64-bit key, token index) (splitmix64). The host draws each row's key from the
//      sequence's seeded random stream, so a seed fixes the tokens.
// NaN logits are never kept. A row with nothing to draw from (all NaN or -inf) gets its argmax.
//
// The thresholds are found without sorting, by MSB-first radix select over the logits'
// order-preserving 32-bit keys (-0.0 ranks just below +0.0): three passes (11, 11, 10 bits),
// each building a 2048-bin histogram (token counts for top-k; probability mass in 32.32 fixed
// point for top-p, integer sums so that the result does not depend on the order of atomics) of
// the tokens whose key matches the digits chosen so far. Passes over the row: one for the
// maximum (with top-k, also the first radix pass's counts), one for the top-p mass histogram
// (top-p alone), then, when the tokens of the coarse bins at and above the threshold's fit in
// shared memory (SAMPLE_CANDIDATES), one to gather them, the rest running there; otherwise
// three per radix select and one for the draw, as if there were no candidate room.
//
// params: SAMPLE_PARAM_WORDS 32-bit words per row (see SampleParam; floats as bits).
// penalty_tokens: pairs (token, output count | SEEN_BIT if seen in prompt or output).
// masks: the rows' token masks, each ceil(vocab / 32) words, token t allowed when bit t % 32
// of word t / 32 is set (llguidance's order); a row's P_MASK word is the offset of its mask in
// words, NO_MASK for none. A warp's 32 lanes read one word (a broadcast) and write their 32
// adjacent logits.
constexpr int SAMPLE_THREADS = 1024;
constexpr int SAMPLE_WARPS = SAMPLE_THREADS / 32;
constexpr int RADIX_BINS = 2048;

enum SampleParam {
    P_TEMPERATURE,
    P_TOP_P,
    P_MIN_P,
    P_TOP_K,
    P_REPETITION,
    P_PRESENCE,
    P_FREQUENCY,
    P_PENALTY_BEGIN,
    P_PENALTY_END,
    P_KEY_LO,
    P_KEY_HI,
    P_MASK,
    SAMPLE_PARAM_WORDS = 12,
};
constexpr unsigned SEEN_BIT = 0x80000000u;
constexpr unsigned NO_MASK = 0xffffffffu;

// Whether candidate (v, i) beats the current best (bv, bi).
__device__ __forceinline__ bool argmax_better(float v, int i, float bv, int bi) {
    const bool v_nan = isnan(v), b_nan = isnan(bv);
    if (v_nan != b_nan) return b_nan;
    if (!v_nan && v != bv) return v > bv;
    return i < bi;
}

// Block-wide argmax of each thread's (best, best_i); the result in every thread.
// Uses red_v / red_i (SAMPLE_WARPS entries each) as scratch. Starts with a barrier (earlier
// readers of the scratch are done) but has none at the end: whoever writes red_v / red_i next
// must start with one (a second block_argmax does).
__device__ __forceinline__ int block_argmax(float best, int best_i, float* red_v, int* red_i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int i = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red_v[warp] = best, red_i[warp] = best_i;
    __syncthreads();
    best = red_v[lane];
    best_i = red_i[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int i = __shfl_xor_sync(0xffffffffu, best_i, o);
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
    }
    return best_i;
}

// Calls f(value, index) for every element of a row, each thread a strided share: float4 loads,
// two in flight per thread, when the row is 16-byte aligned.
template <typename F>
__device__ __forceinline__ void for_each_logit(const float* row, int vocab, F&& f) {
    if ((vocab & 3) == 0) {
        const float4* r4 = reinterpret_cast<const float4*>(row);
        const int n4 = vocab >> 2;
        int j = threadIdx.x;
        for (; j + SAMPLE_THREADS < n4; j += 2 * SAMPLE_THREADS) {
            const float4 a = r4[j], b = r4[j + SAMPLE_THREADS];
            const int i = 4 * j, k = 4 * (j + SAMPLE_THREADS);
            f(a.x, i), f(a.y, i + 1), f(a.z, i + 2), f(a.w, i + 3);
            f(b.x, k), f(b.y, k + 1), f(b.z, k + 2), f(b.w, k + 3);
        }
        if (j < n4) {
            const float4 a = r4[j];
            const int i = 4 * j;
            f(a.x, i), f(a.y, i + 1), f(a.z, i + 2), f(a.w, i + 3);
        }
    } else {
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) f(row[i], i);
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
argmax(const float* __restrict__ logits, int vocab, int* __restrict__ out) {
    pdl_begin();
    __shared__ float red_v[SAMPLE_WARPS];
    __shared__ int red_i[SAMPLE_WARPS];
    // Start from "NaN at no index", which every element beats or ties past.
    float best = __int_as_float(0x7fffffff);
    int best_i = 0x7fffffff;
    for_each_logit(logits + (long long)blockIdx.x * vocab, vocab, [&](float v, int i) {
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
    });
    best_i = block_argmax(best, best_i, red_v, red_i);
    if (threadIdx.x == 0) out[blockIdx.x] = best_i;
}

// Order-preserving map of a float to an unsigned key (a < b  <=>  key(a) < key(b)).
__device__ __forceinline__ unsigned order_key(float f) {
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// splitmix64's output number i + 1 from state `key`, as a float uniform in (0, 1).
__device__ __forceinline__ float uniform(unsigned long long key, int i) {
    unsigned long long z = key + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 41) + 0.5f) * 0x1p-23f;
}

// Tokens the sample kernel can hold in shared memory as the candidates of a row (see below).
#ifndef SAMPLE_CANDIDATES
#define SAMPLE_CANDIDATES 2048
#endif
constexpr int CAND_CAP = SAMPLE_CANDIDATES;
// An upper bound of -ln(-ln u) for the largest u uniform() returns (1 - 2^-24): 16.64.
constexpr float GUMBEL_MAX = 17.0f;
// Bits of a key the first radix pass looks at (its bin: key >> COARSE_SHIFT).
constexpr int COARSE_SHIFT = 21;

// Shared memory of one sample CTA.
struct SampleSmem {
    unsigned long long hist[RADIX_BINS];  // the weight of each bin of a radix pass
    unsigned counts[RADIX_BINS];          // tokens per bin of the first pass (coarse bins)
    float cand_v[CAND_CAP > 0 ? CAND_CAP : 1];  // the candidates: logits and token ids
    int cand_i[CAND_CAP > 0 ? CAND_CAP : 1];
    unsigned long long warp_sum[SAMPLE_WARPS];
    float red_v[SAMPLE_WARPS];
    int red_i[SAMPLE_WARPS];
    unsigned long long target, above;
    unsigned bin;
    int num_cand;
};

// Block-wide sum of each thread's v; the result in every thread. Starts and ends with a barrier.
__device__ __forceinline__ unsigned long long block_sum(unsigned long long v, SampleSmem& sm) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sm.warp_sum[threadIdx.x >> 5] = v;
    __syncthreads();
    unsigned long long total = 0;
    for (int w = 0; w < SAMPLE_WARPS; ++w) total += sm.warp_sum[w];
    __syncthreads();
    return total;
}

// With sm.hist holding the weights of `bins` bins: the bin in which the running weight, from
// the highest bin down, reaches `target` — ceil(fraction x total) instead when fraction > 0 —
// clamped to [1, total]. Sets sm.bin, sm.above (the weight of the bins above it) and sm.target
// (the clamped target). Every thread calls it; it ends with a barrier.
__device__ void find_bin(int bins, unsigned long long target, float fraction, SampleSmem& sm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Suffix sums from the highest bin down: thread t owns bins bins-1-2t and bins-2-2t.
    const int hi = bins - 1 - 2 * threadIdx.x;
    const unsigned long long w_hi = hi >= 0 ? sm.hist[hi] : 0;
    const unsigned long long w_lo = hi >= 1 ? sm.hist[hi - 1] : 0;
    unsigned long long incl = w_hi + w_lo;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    __syncthreads();  // warp_sum may still be read by a previous call's threads
    if (lane == 31) sm.warp_sum[warp] = incl;
    __syncthreads();
    unsigned long long before = 0, total = 0;
    for (int w = 0; w < SAMPLE_WARPS; ++w) {
        before += w < warp ? sm.warp_sum[w] : 0;
        total += sm.warp_sum[w];
    }
    before += incl - (w_hi + w_lo);
    if (fraction > 0.0f) target = (unsigned long long)ceil((double)fraction * (double)total);
    target = max(1ull, min(target, total));
    if (before < target && before + w_hi >= target) {
        sm.bin = hi, sm.above = before;
    } else if (before + w_hi < target && before + w_hi + w_lo >= target) {
        sm.bin = hi - 1, sm.above = before + w_hi;
    }
    if (threadIdx.x == 0) {
        sm.target = target;
        if (total == 0) sm.bin = 0, sm.above = 0;  // no candidate at all
    }
    __syncthreads();
}

// The largest key t such that the total weight of the tokens with key >= t reaches `target`
// (with `fraction` > 0: ceil(fraction x total weight)), clamped to the total weight.
// for_each(f) calls f(value, index) for every token of the set searched (each thread a share);
// weight(v, i) is a token's weight (0: not counted). Three passes of 11, 11 and 10 bits.
template <typename ForEach, typename W>
__device__ unsigned radix_select(ForEach&& for_each, unsigned long long target, float fraction,
                                 W&& weight, SampleSmem& sm) {
    constexpr int SHIFTS[3] = {COARSE_SHIFT, 10, 0}, BITS[3] = {11, 11, 10};
    unsigned prefix = 0, mask = 0;
#pragma unroll 1
    for (int pass = 0; pass < 3; ++pass) {
        const int shift = SHIFTS[pass], bins = 1 << BITS[pass];
        for (int b = threadIdx.x; b < RADIX_BINS; b += SAMPLE_THREADS) sm.hist[b] = 0;
        __syncthreads();
        for_each([&](float v, int i) {
            const unsigned k = order_key(v);
            if ((k & mask) != prefix) return;
            const unsigned long long w = weight(v, i);
            if (w) atomicAdd(&sm.hist[(k >> shift) & (bins - 1)], w);
        });
        __syncthreads();
        find_bin(bins, target, pass == 0 ? fraction : 0.0f, sm);
        target = sm.target - sm.above;
        prefix |= sm.bin << shift;
        mask |= (unsigned)(bins - 1) << shift;
        __syncthreads();  // sm.bin / sm.above / sm.target are rewritten by the next pass
    }
    return prefix;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample(float* logits, int vocab, const unsigned* __restrict__ params,
       const unsigned* __restrict__ penalty_tokens, const unsigned* __restrict__ masks,
       int* __restrict__ out) {
    pdl_begin();
    __shared__ SampleSmem sm;
    const unsigned* p = params + blockIdx.x * SAMPLE_PARAM_WORDS;
    const float temperature = __uint_as_float(p[P_TEMPERATURE]);
    const float top_p = __uint_as_float(p[P_TOP_P]), min_p = __uint_as_float(p[P_MIN_P]);
    const int top_k = (int)p[P_TOP_K];
    const bool greedy = temperature == 0.0f || top_k == 1;
    const bool use_top_k = !greedy && top_k > 0 && top_k < vocab, use_top_p = top_p < 1.0f;
    float* row = logits + (long long)blockIdx.x * vocab;

    // 0. The mask, in place; its writes are done before the penalties read (the barrier).
    if (p[P_MASK] != NO_MASK) {
        const unsigned* mask = masks + p[P_MASK];
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
            if (!((mask[i >> 5] >> (i & 31)) & 1u)) row[i] = -INFINITY;
        __syncthreads();
    }

    // 1. Penalties, in place (each entry names a different token).
    const float repetition = __uint_as_float(p[P_REPETITION]);
    const float presence = __uint_as_float(p[P_PRESENCE]), frequency = __uint_as_float(p[P_FREQUENCY]);
    for (int e = (int)p[P_PENALTY_BEGIN] + threadIdx.x; e < (int)p[P_PENALTY_END]; e += SAMPLE_THREADS) {
        const unsigned token = penalty_tokens[2 * e], c = penalty_tokens[2 * e + 1];
        const unsigned count = c & ~SEEN_BIT;
        float l = row[token];
        if (c & SEEN_BIT) l = l > 0.0f ? l / repetition : l * repetition;
        if (count) l -= frequency * (float)count + presence;
        row[token] = l;
    }
    for (int b = threadIdx.x; b < RADIX_BINS; b += SAMPLE_THREADS) sm.counts[b] = 0;
    __syncthreads();  // the block's own global writes are visible to it after the barrier

    // 2. The argmax (the answer for greedy rows) and the maximum; with top-k, the token count
    //    of each coarse bin too.
    float best = __int_as_float(0x7fffffff);
    int best_i = 0x7fffffff;
    for_each_logit(row, vocab, [&](float v, int i) {
        if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
        if (use_top_k && !isnan(v)) atomicAdd(&sm.counts[order_key(v) >> COARSE_SHIFT], 1u);
    });
    const int arg = block_argmax(best, best_i, sm.red_v, sm.red_i);
    if (greedy) {
        if (threadIdx.x == 0) out[blockIdx.x] = arg;
        return;
    }
    const float m = row[arg];
    const float inv_t = 1.0f / temperature;
    // A token is kept when order_key(l) >= floor.
    unsigned floor = order_key(-INFINITY);
    if (min_p > 0.0f) floor = order_key(m + logf(min_p) * temperature);
    auto mass = [&](float v) { return __float2ull_rn(expf((v - m) * inv_t) * 4294967296.0f); };

    // 3. The candidates: every token of the coarse bins at or above the one holding the top-k
    //    threshold (with top-k) or the top-p threshold (top-p alone), when they fit in shared
    //    memory; the thresholds are then found among them, and the draw made among them, with
    //    no further pass over the row. Otherwise those passes read the row.
    bool use_cand = false;
    unsigned long long top_p_target = 0;  // with top-p alone: ceil(top_p x the row's mass)
    if (use_top_k || use_top_p) {
        unsigned long long in_bins;
        if (use_top_k) {
            for (int b = threadIdx.x; b < RADIX_BINS; b += SAMPLE_THREADS) sm.hist[b] = sm.counts[b];
            __syncthreads();
            find_bin(RADIX_BINS, (unsigned long long)top_k, 0.0f, sm);
            in_bins = sm.above + sm.hist[sm.bin];
        } else {
            for (int b = threadIdx.x; b < RADIX_BINS; b += SAMPLE_THREADS) sm.hist[b] = 0;
            __syncthreads();
            for_each_logit(row, vocab, [&](float v, int) {
                const unsigned k = order_key(v);
                if (isnan(v) || k < floor) return;
                atomicAdd(&sm.counts[k >> COARSE_SHIFT], 1u);
                const unsigned long long w = mass(v);
                if (w) atomicAdd(&sm.hist[k >> COARSE_SHIFT], w);
            });
            __syncthreads();
            find_bin(RADIX_BINS, 0ull, top_p, sm);
            top_p_target = sm.target;
            unsigned long long n = 0;
            for (int b = threadIdx.x; b < RADIX_BINS; b += SAMPLE_THREADS)
                n += b >= (int)sm.bin ? sm.counts[b] : 0;
            in_bins = block_sum(n, sm);
        }
        const unsigned lo_bin = sm.bin;
        use_cand = CAND_CAP > 0 && in_bins <= (unsigned long long)CAND_CAP;
        if (use_cand) {
            if (threadIdx.x == 0) sm.num_cand = 0;
            __syncthreads();
            for_each_logit(row, vocab, [&](float v, int i) {
                const unsigned k = order_key(v);
                if (isnan(v) || (k >> COARSE_SHIFT) < lo_bin || k < floor) return;
                const int c = atomicAdd(&sm.num_cand, 1);
                sm.cand_v[c] = v, sm.cand_i[c] = i;
            });
        }
        __syncthreads();
    }
    // The tokens the thresholds and the draw look at: the candidates, or the whole row. Every
    // result below is independent of their order (integer sums, argmax with index ties).
    auto each = [&](auto&& f) {
        if (use_cand) {
            for (int c = threadIdx.x; c < sm.num_cand; c += SAMPLE_THREADS) f(sm.cand_v[c], sm.cand_i[c]);
        } else {
            for_each_logit(row, vocab, f);
        }
    };

    // 4. Thresholds. Candidates lie at or above the min-p floor; top-k counts them all, which
    //    keeps the same set as counting the whole row (max(k-th largest, floor) either way).
    if (use_top_k) {
        const unsigned t = radix_select(
            each, (unsigned long long)top_k, 0.0f, [](float v, int) { return isnan(v) ? 0ull : 1ull; },
            sm);
        floor = max(floor, t);
    }
    if (use_top_p) {
        const unsigned kept = floor;
        auto weight = [&](float v, int) {
            return isnan(v) || order_key(v) < kept ? 0ull : mass(v);
        };
        // Top-p alone over candidates: the target is the whole row's (found above).
        const bool row_target = use_cand && !use_top_k;
        const unsigned t = radix_select(each, top_p_target, row_target ? 0.0f : top_p, weight, sm);
        floor = max(floor, t);
    }

    // 5. The exponential race among the kept tokens. A token whose scaled logit s is below the
    //    argmax's race value (s = 0) minus GUMBEL_MAX cannot win: it is skipped unhashed.
    const unsigned long long key = ((unsigned long long)p[P_KEY_HI] << 32) | p[P_KEY_LO];
    const float arg_race = -logf(-logf(uniform(key, arg)));
    best = -INFINITY;
    best_i = 0x7fffffff;
    each([&](float v, int i) {
        if (isnan(v) || order_key(v) < floor) return;
        const float s = (v - m) * inv_t;
        if (s + GUMBEL_MAX < arg_race) return;
        const float race = s - logf(-logf(uniform(key, i)));
        if (race > best || (race == best && i < best_i)) best = race, best_i = i;
    });
    const int won = block_argmax(best, best_i, sm.red_v, sm.red_i);
    if (threadIdx.x == 0) out[blockIdx.x] = won == 0x7fffffff ? arg : won;
}
