/* Paged attention on CPU: every query reads its sequence's keys and values straight from the block
 * table, so no copy of the context is ever made (the SDPA path gathers each sequence's blocks first).
 *
 * One task per (query token, KV head): the task's G = H / Hkv query heads share each key and value
 * row read from memory (GQA). Scores, softmax and the weighted sum of values are float32 whatever the
 * cache dtype. Tasks are independent, so a token's result never depends on what else is in the batch.
 * Keys are taken four at a time: four independent sums per pass keep the FMA units busy instead of
 * waiting on one dependency chain.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include "vector_math.c"

enum { CACHE_F32 = 0, CACHE_BF16 = 1 };
#define KEYS_PER_PASS 4
#define WIDE_KEYS 16  /* keys per pass of the AVX-512 path */

#include "attend_wide.c"

/* The cache rows of one head at positions first..first+count-1 as float32 row pointers: the rows
 * themselves, or their bf16 values widened into `scratch` ([KEYS_PER_PASS, D]). */
static inline void cache_rows(const void *cache, int dtype, const int64_t *table, int64_t block_size,
                              int64_t block_stride, int64_t slot_stride, int64_t head_offset, int64_t first,
                              int count, int64_t D, float *scratch, const float **rows) {
    for (int j = 0; j < count; ++j) {
        const int64_t p = first + j;
        const int64_t offset = table[p / block_size] * block_stride + (p % block_size) * slot_stride + head_offset;
        if (dtype == CACHE_F32) {
            rows[j] = (const float *)cache + offset;
            continue;
        }
        const uint16_t *src = (const uint16_t *)cache + offset;
        uint32_t *dst = (uint32_t *)(scratch + j * D);
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) dst[d] = (uint32_t)src[d] << 16;
        rows[j] = scratch + j * D;
    }
    for (int j = count; j < KEYS_PER_PASS; ++j) rows[j] = rows[0];  /* padding lanes: weight 0 / unused */
}

/* out, q: [T, H, D] float32. k_cache, v_cache: [num_blocks, block_size, Hkv, D] of `dtype`.
 * block_tables: [num_rows, max_blocks]; token_row[t] is token t's row, token_pos[t] its absolute
 * position: it sees keys max(0, pos - window + 1) .. pos (window <= 0: no window).
 * Returns 0, or -1 when scratch memory could not be allocated (out is then incomplete). */
int paged_attention(float *out, const float *q, const void *k_cache, const void *v_cache, int dtype,
                    const int64_t *block_tables, int64_t max_blocks, const int64_t *token_row,
                    const int64_t *token_pos, int64_t num_tokens, int64_t num_heads, int64_t num_kv_heads,
                    int64_t head_dim, int64_t block_size, float scale, int64_t window, int num_threads) {
    const int64_t G = num_heads / num_kv_heads, D = head_dim;
    const int64_t slot_stride = num_kv_heads * D, block_stride = block_size * slot_stride;
    int64_t max_ctx = 1;
    for (int64_t t = 0; t < num_tokens; ++t)
        if (token_pos[t] + 1 > max_ctx) max_ctx = token_pos[t] + 1;
    const int64_t stride = max_ctx + WIDE_KEYS;  /* one query head's scores, with room for padding lanes */
#ifdef __AVX512F__
    const int wide = D % 16 == 0;
#endif
    /* A task is one token and a range of its KV heads. All heads at once reads each cache row whole
     * (rows are [Hkv, D]: a third of a row at a time streams far slower); with fewer tokens than
     * threads, the heads are split across tasks so every thread has work. */
    const int64_t splits = num_tokens >= 2 * (int64_t)num_threads ? 1 : num_kv_heads;
    const int64_t heads_per_task = num_kv_heads / splits;
    int failed = 0;

#pragma omp parallel num_threads(num_threads)
    {
        float *scores = malloc(sizeof(float) * (size_t)(num_heads * stride));
        float *acc = malloc(sizeof(float) * (size_t)(num_heads * D));
        float *scratch = malloc(sizeof(float) * (size_t)(KEYS_PER_PASS * D));
        int64_t *offsets = malloc(sizeof(int64_t) * (size_t)stride);
        if (!scores || !acc || !scratch || !offsets) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < num_tokens * splits; ++task) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop) continue;
            const int64_t t = task / splits, h0 = (task % splits) * heads_per_task, h1 = h0 + heads_per_task;
            const int64_t *table = block_tables + token_row[t] * max_blocks;
            const int64_t last = token_pos[t];
            const int64_t first = (window > 0 && last - window + 1 > 0) ? last - window + 1 : 0;
            const int64_t n = last - first + 1;
#ifdef __AVX512F__
            if (wide) {
                attend_wide(out + t * num_heads * D, q + t * num_heads * D, k_cache, v_cache, dtype, table, first,
                            n, h0, h1, G, D, block_size, block_stride, slot_stride, scale, scores, stride, offsets);
                continue;
            }
#endif
            const float *r[KEYS_PER_PASS];

            /* scores = q . k * scale for every visible key */
            for (int64_t i = 0; i < n; i += KEYS_PER_PASS) {
                const int count = n - i < KEYS_PER_PASS ? (int)(n - i) : KEYS_PER_PASS;
                for (int64_t h = h0; h < h1; ++h) {
                    cache_rows(k_cache, dtype, table, block_size, block_stride, slot_stride, h * D, first + i,
                               count, D, scratch, r);
                    for (int64_t head = h * G; head < (h + 1) * G; ++head) {
                        const float *qg = q + (t * num_heads + head) * D;
                        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                        for (int64_t d = 0; d < D; ++d) {
                            s0 += qg[d] * r[0][d];
                            s1 += qg[d] * r[1][d];
                            s2 += qg[d] * r[2][d];
                            s3 += qg[d] * r[3][d];
                        }
                        float *sg = scores + head * stride + i;
                        sg[0] = s0 * scale, sg[1] = s1 * scale, sg[2] = s2 * scale, sg[3] = s3 * scale;
                    }
                }
            }
            /* softmax over the visible keys; the padding lanes past n get weight 0 */
            for (int64_t head = h0 * G; head < h1 * G; ++head) {
                float *sg = scores + head * stride;
                float top = -INFINITY, sum = 0.f;
                for (int64_t i = 0; i < n; ++i) top = sg[i] > top ? sg[i] : top;
                for (int64_t i = 0; i < n; ++i) {
                    sg[i] = expf(sg[i] - top);
                    sum += sg[i];
                }
                const float inv = 1.f / sum;
                for (int64_t i = 0; i < n; ++i) sg[i] *= inv;
                for (int64_t i = n; i < n + KEYS_PER_PASS; ++i) sg[i] = 0.f;
            }
            /* out = softmax . v */
            memset(acc + h0 * G * D, 0, sizeof(float) * (size_t)((h1 - h0) * G * D));
            for (int64_t i = 0; i < n; i += KEYS_PER_PASS) {
                const int count = n - i < KEYS_PER_PASS ? (int)(n - i) : KEYS_PER_PASS;
                for (int64_t h = h0; h < h1; ++h) {
                    cache_rows(v_cache, dtype, table, block_size, block_stride, slot_stride, h * D, first + i,
                               count, D, scratch, r);
                    for (int64_t head = h * G; head < (h + 1) * G; ++head) {
                        const float *w = scores + head * stride + i;
                        float *ag = acc + head * D;
#pragma omp simd
                        for (int64_t d = 0; d < D; ++d)
                            ag[d] += w[0] * r[0][d] + w[1] * r[1][d] + w[2] * r[2][d] + w[3] * r[3][d];
                    }
                }
            }
            memcpy(out + (t * num_heads + h0 * G) * D, acc + h0 * G * D, sizeof(float) * (size_t)((h1 - h0) * G * D));
        }
        free(scores);
        free(acc);
        free(scratch);
        free(offsets);
    }
    return failed ? -1 : 0;
}
