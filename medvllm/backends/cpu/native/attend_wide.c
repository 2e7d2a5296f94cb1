/* The AVX-512 path of paged attention (paged_attention.c includes it): one token's heads over its
 * context in windows of 16 keys, every cache row read whole, prefetched a share at a time.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py, as part of the kernels library.
 */
#ifdef __AVX512F__
/* 16 floats of a cache row at `offset`, widened from bf16 when the cache holds bf16 (exact). */
static inline __m512 row16(const void *cache, int dtype, int64_t offset) {
    if (dtype == CACHE_F32) return _mm512_loadu_ps((const float *)cache + offset);
    const __m256i half = _mm256_loadu_si256((const __m256i *)((const uint16_t *)cache + offset));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

/* softmax in place over n scores, 16 at a time: the float32 steps of the portable path (paged_attention.c) */
static void softmax(float *sg, int64_t n) {
    __m512 top = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, m, sg + i));
    }
    const __m512 t = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sg + i), t));
        _mm512_mask_storeu_ps(sg + i, m, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(sg + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sg + i), inv));
    }
}

/* Asks for the next window's rows ahead of use: the blocks of a sequence lie anywhere in the pool, so
 * the hardware prefetcher loses the stream at every block. */
static inline void prefetch_keys(const void *cache, int dtype, const int64_t *offsets, int64_t from,
                                 int64_t to, int64_t n, int64_t at, int64_t width, int to_l1) {
    const int64_t size = dtype == CACHE_F32 ? 4 : 2, end = to < n ? to : n;
    for (int64_t k = from; k < end; ++k) {
        const char *row = (const char *)cache + (offsets[k] + at) * size;
        if (to_l1)
            for (int64_t b = 0; b < width * size; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
        else
            for (int64_t b = 0; b < width * size; b += 64) _mm_prefetch(row + b, _MM_HINT_T1);
    }
}

/* One token, KV heads [h0, h1), D a multiple of 16. Keys go by in windows of 16, each cache row read
 * whole (all the task's heads) and once for the scores and once for the values: a cache row is
 * [Hkv, D], and reading a third of it per pass streams far slower. Scores: the 16 keys' dot products
 * with a query head reduced together (sum16). Values: each value vector read meets up to 4 query heads,
 * even and odd keys in separate sums. out: the token's [H, D]; `offsets`: n slots; `scores`: [H, stride]
 * with stride >= n + WIDE_KEYS. */
static void attend_wide(float *out, const float *q, const void *k_cache, const void *v_cache, int dtype,
                        const int64_t *table, int64_t first, int64_t n, int64_t h0, int64_t h1, int64_t G,
                        int64_t D, int64_t block_size, int64_t block_stride, int64_t slot_stride, float scale,
                        float *scores, int64_t stride, int64_t *offsets) {
    const int64_t chunks = D / 16;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t p = first + i;
        offsets[i] = table[p / block_size] * block_stride + (p % block_size) * slot_stride;
    }
    for (int64_t i = 0; i < n; i += WIDE_KEYS) {
        const int count = n - i < WIDE_KEYS ? (int)(n - i) : WIDE_KEYS;
        const int64_t heads = (h1 - h0) * G;
        for (int64_t head = h0 * G; head < h1 * G; ++head) {
            /* a share of the next window's keys into L1, and of this window's values into L2 for the second
             * pass (a token's fit there), spread over the heads: a burst of them all would stall on the
             * core's few outstanding misses before any arithmetic could start */
            const int64_t share = head - h0 * G, lo = share * WIDE_KEYS / heads, hi = (share + 1) * WIDE_KEYS / heads;
            prefetch_keys(k_cache, dtype, offsets, i + WIDE_KEYS + lo, i + WIDE_KEYS + hi, n, h0 * D, (h1 - h0) * D, 1);
            prefetch_keys(v_cache, dtype, offsets, i + lo, i + hi, n, h0 * D, (h1 - h0) * D, 0);
            const float *qg = q + head * D;
            const int64_t at = (head / G) * D;
            __m512 part[WIDE_KEYS];
            if (chunks == 4) {  /* D = 64: the query in registers, the 64 products unrolled */
                const __m512 q0 = _mm512_loadu_ps(qg), q1 = _mm512_loadu_ps(qg + 16), q2 = _mm512_loadu_ps(qg + 32),
                             q3 = _mm512_loadu_ps(qg + 48);
                for (int j = 0; j < WIDE_KEYS; ++j) {
                    if (j >= count) {
                        part[j] = _mm512_setzero_ps();
                        continue;
                    }
                    const int64_t o = offsets[i + j] + at;
                    __m512 acc = _mm512_mul_ps(q0, row16(k_cache, dtype, o));
                    acc = _mm512_fmadd_ps(q1, row16(k_cache, dtype, o + 16), acc);
                    acc = _mm512_fmadd_ps(q2, row16(k_cache, dtype, o + 32), acc);
                    part[j] = _mm512_fmadd_ps(q3, row16(k_cache, dtype, o + 48), acc);
                }
            } else {
                for (int j = 0; j < WIDE_KEYS; ++j) {
                    __m512 acc = _mm512_setzero_ps();
                    if (j < count)
                        for (int64_t c = 0; c < chunks; ++c)
                            acc = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c),
                                                  row16(k_cache, dtype, offsets[i + j] + at + 16 * c), acc);
                    part[j] = acc;
                }
            }
            _mm512_storeu_ps(scores + head * stride + i, _mm512_mul_ps(sum16(part), _mm512_set1_ps(scale)));
        }
    }
    for (int64_t head = h0 * G; head < h1 * G; ++head) softmax(scores + head * stride, n);

    memset(out + h0 * G * D, 0, sizeof(float) * (size_t)((h1 - h0) * G * D));
    for (int64_t i = 0; i < n; i += WIDE_KEYS) {
        const int64_t end = n - i < WIDE_KEYS ? n : i + WIDE_KEYS;
        for (int64_t h = h0; h < h1; ++h) {
            const int64_t lo = (h - h0) * WIDE_KEYS / (h1 - h0), hi = (h - h0 + 1) * WIDE_KEYS / (h1 - h0);
            prefetch_keys(v_cache, dtype, offsets, i + WIDE_KEYS + lo, i + WIDE_KEYS + hi, n, h0 * D, (h1 - h0) * D, 1);
            for (int64_t g0 = h * G; g0 < (h + 1) * G; g0 += 4) {
                const int heads = (h + 1) * G - g0 < 4 ? (int)((h + 1) * G - g0) : 4;
                if (chunks == 4) {  /* D = 64: the heads' whole outputs in registers over the window */
                    __m512 acc[4][4];
                    for (int b = 0; b < heads; ++b)
                        for (int c = 0; c < 4; ++c) acc[b][c] = _mm512_loadu_ps(out + (g0 + b) * D + 16 * c);
                    for (int64_t k = i; k < end; ++k) {
                        const int64_t o = offsets[k] + h * D;
                        const __m512 v0 = row16(v_cache, dtype, o), v1 = row16(v_cache, dtype, o + 16),
                                     v2 = row16(v_cache, dtype, o + 32), v3 = row16(v_cache, dtype, o + 48);
                        for (int b = 0; b < heads; ++b) {
                            const __m512 w = _mm512_set1_ps(scores[(g0 + b) * stride + k]);
                            acc[b][0] = _mm512_fmadd_ps(w, v0, acc[b][0]);
                            acc[b][1] = _mm512_fmadd_ps(w, v1, acc[b][1]);
                            acc[b][2] = _mm512_fmadd_ps(w, v2, acc[b][2]);
                            acc[b][3] = _mm512_fmadd_ps(w, v3, acc[b][3]);
                        }
                    }
                    for (int b = 0; b < heads; ++b)
                        for (int c = 0; c < 4; ++c) _mm512_storeu_ps(out + (g0 + b) * D + 16 * c, acc[b][c]);
                    continue;
                }
                for (int64_t c = 0; c < chunks; ++c) {
                    const int64_t at = h * D + 16 * c;
                    __m512 even[4], odd[4];
                    for (int b = 0; b < 4; ++b) even[b] = odd[b] = _mm512_setzero_ps();
                    int64_t k = i;
                    for (; k + 2 <= end; k += 2) {
                        const __m512 v0 = row16(v_cache, dtype, offsets[k] + at);
                        const __m512 v1 = row16(v_cache, dtype, offsets[k + 1] + at);
                        for (int b = 0; b < heads; ++b) {
                            const float *w = scores + (g0 + b) * stride + k;
                            even[b] = _mm512_fmadd_ps(_mm512_set1_ps(w[0]), v0, even[b]);
                            odd[b] = _mm512_fmadd_ps(_mm512_set1_ps(w[1]), v1, odd[b]);
                        }
                    }
                    if (k < end) {
                        const __m512 v0 = row16(v_cache, dtype, offsets[k] + at);
                        for (int b = 0; b < heads; ++b)
                            even[b] = _mm512_fmadd_ps(_mm512_set1_ps(scores[(g0 + b) * stride + k]), v0, even[b]);
                    }
                    for (int b = 0; b < heads; ++b) {
                        float *o = out + (g0 + b) * D + 16 * c;
                        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_add_ps(even[b], odd[b])));
                    }
                }
            }
        }
    }
}
#endif
