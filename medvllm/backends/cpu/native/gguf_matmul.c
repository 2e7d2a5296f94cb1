/* Matmul on GGUF weight blocks as the file holds them (never expanded to float): out[m, n] =
 * sum_k x[m, k] * W[n, k], with x quantized per 32 inputs (gguf_act.c) and W's rows unpacked eight at a
 * time into bytes and scales (gguf_blocks.c) that stay in L1 while every token passes over them.
 *
 * Threads take chunks of eight output rows; tokens go in blocks of GGUF_TOKEN_BLOCK whose activations
 * stay in L2 while every chunk of rows passes. Whole groups of 16 tokens run with tokens in lanes on the
 * unpacked rows (gguf_dot.c), the rest with rows in lanes on the blocks themselves (gguf_rows.c); both compute the same float steps, so a token's result does not
 * depend on the other tokens, on the thread count or on the instruction set.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <stdlib.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif

#include "gguf_dequant.c"
#include "gguf_rows.c"

#define GGUF_TOKEN_BLOCK 128 /* tokens whose activations stay in L2 (~0.5 MB at K = 1536) */

/* the chunk's GGUF_ROWS rows x one group of 16 tokens -> res (portable path with reference set) */
static void gguf_chunk_groups(int qt, int parts, const uint8_t *u, int64_t K, const float *ws, const float *wm,
                              const uint8_t *grp, float res[][GGUF_GROUP], int reference) {
    (void)reference;  /* the portable build has one path */
#define GGUF_GROUP_CASE(Q, P)                                                                   \
    for (int r = 0; r < GGUF_ROWS; r += 4) gguf_tokens4(Q, P, u + r * K, K, ws + r, wm + r, grp, res + r)
#define GGUF_GROUP_CASE2(Q, P)                                                                                  \
    for (int r = 0; r < GGUF_ROWS; r += 2)                                                                      \
        for (int h = 0; h < 2; ++h) gguf_tokens2(Q, P, h, u + r * K, K, ws + r, wm + r, grp, res + r)
#if defined(GGUF_VNNI)
#define GGUF_RUN GGUF_GROUP_CASE
#elif defined(GGUF_AVX2)
#define GGUF_RUN GGUF_GROUP_CASE2
#endif
#ifdef GGUF_RUN
    if (!reference) {
    /* constant types and parts: each case compiles to its own unrolled kernel */
#define GGUF_BOTH(Q) if (parts == 2) { GGUF_RUN(Q, 2); } else { GGUF_RUN(Q, 1); } break
#define GGUF_CASE(Q) case Q: GGUF_BOTH(Q);
    switch (qt) { GGUF_EACH_TYPE(GGUF_CASE) }
#undef GGUF_CASE
    return;
    }
#undef GGUF_BOTH
#endif
    for (int r = 0; r < GGUF_ROWS; ++r)
        for (int i = 0; i < GGUF_GROUP; ++i)
            res[r][i] = gguf_dot_c(qt, parts, u + r * K, K, ws + r, wm + r, grp, i, NULL);
}

/* the chunk's unpacked rows x one token after the last whole group -> res, on the portable path (the
 * SIMD builds read the blocks directly: gguf_rows.c) */
static void gguf_chunk_token(int qt, int parts, const uint8_t *u, int64_t K, const float *ws, const float *wm,
                             const GgufTok *tok, float *res) {
    for (int r = 0; r < GGUF_ROWS; ++r)
        res[r] = gguf_dot_c(qt, parts, u + r * K, K, ws + r, wm + r, NULL, 0, tok);
}

/* Ask for the next chunk's rows while this one is computed: one-token decode reads each weight byte
 * once, and the first touch of each line otherwise waits on memory. */
static inline void gguf_prefetch_chunk(const uint8_t *w, int64_t row_bytes, int64_t n0, int64_t N) {
#ifdef __SSE__
    if (n0 >= N) return;
    const int64_t rows = N - n0 < GGUF_ROWS ? N - n0 : GGUF_ROWS;
    const uint8_t *p = w + n0 * row_bytes;
    for (int64_t at = 0; at < rows * row_bytes; at += 64) _mm_prefetch((const char *)(p + at), _MM_HINT_T0);
#else
    (void)w, (void)row_bytes, (void)n0, (void)N;
#endif
}

static int gguf_matmul(float *out, int64_t ldo, const void *qx, int64_t M, int64_t K, const uint8_t *w, int64_t N,
                       int qtype, int parts, int threads, int reference) {
    const int bs = gguf_block_size(qtype);
    if (!bs || K <= 0 || K % bs || (parts != 1 && parts != 2)) return 2;
    if (M <= 0 || N <= 0) return 0;
    const int64_t row_bytes = K / bs * gguf_type_size(qtype), nb = K / 32;
    const int64_t groups = M / GGUF_GROUP, grouped = groups * GGUF_GROUP;
    const int64_t chunks = (N + GGUF_ROWS - 1) / GGUF_ROWS, per_block = GGUF_TOKEN_BLOCK / GGUF_GROUP;
    const int64_t passes = groups ? (groups + per_block - 1) / per_block : 1;
    const uint8_t *act = qx;
    const GgufTok *tail = (const GgufTok *)(act + groups * nb * GREC_BYTES);
    const size_t scratch = (size_t)(GGUF_ROWS * K) + (size_t)nb * GGUF_ROWS * 8;
#ifdef GGUF_FUSED_ROWS
    const int fused = !reference;  /* tail tokens read the blocks themselves: no scratch without groups */
#else
    const int fused = 0;
#endif
    const int unpack = groups > 0 || !fused;
    int failed = 0;
#pragma omp parallel num_threads(threads) if (chunks > 1)
    {
        uint8_t *u = unpack ? aligned_alloc(64, (scratch + 63) / 64 * 64) : NULL;
        if (unpack && !u) {
#pragma omp atomic write
            failed = 1;
        }
        float *ws = u ? (float *)(u + GGUF_ROWS * K) : NULL, *wm = ws + nb * GGUF_ROWS;
        for (int64_t pass = 0; pass < passes; ++pass) {
#pragma omp for schedule(static)
            for (int64_t c = 0; c < chunks; ++c) {
                if (unpack && !u) continue;
                const int64_t n0 = c * GGUF_ROWS, rows = N - n0 < GGUF_ROWS ? N - n0 : GGUF_ROWS;
                if (unpack) gguf_prefetch_chunk(w, row_bytes, n0 + GGUF_ROWS, N);
                if (unpack) {
                    for (int64_t r = 0; r < rows; ++r)
                        gguf_unpack_row(qtype, w + (n0 + r) * row_bytes, K, u + r * K, ws + r, wm + r, GGUF_ROWS);
                    if (rows < GGUF_ROWS) {  /* rows past N: zero weights, computed and never stored */
                        memset(u + rows * K, 0, (size_t)((GGUF_ROWS - rows) * K));
                        for (int64_t b = 0; b < nb; ++b)
                            for (int64_t r = rows; r < GGUF_ROWS; ++r) {
                                const int64_t at = b * GGUF_ROWS + r;
                                ws[at] = wm[at] = 0.f;
                            }
                    }
                    const int64_t g1 = (pass + 1) * per_block < groups ? (pass + 1) * per_block : groups;
                    for (int64_t g = pass * per_block; g < g1; ++g) {
                        float res[GGUF_ROWS][GGUF_GROUP];
                        gguf_chunk_groups(qtype, parts, u, K, ws, wm, act + g * nb * GREC_BYTES, res, reference);
                        for (int i = 0; i < GGUF_GROUP; ++i)
                            for (int64_t r = 0; r < rows; ++r) out[(g * GGUF_GROUP + i) * ldo + n0 + r] = res[r][i];
                    }
                }
                if (pass + 1 < passes) continue;
                for (int64_t m = grouped; m < M; ++m) {
                    float res[GGUF_ROWS];
#ifdef GGUF_FUSED_ROWS
                    if (fused)
                        gguf_chunk_token_fused(qtype, parts, w + n0 * row_bytes, row_bytes, rows, K,
                                               tail + (m - grouped) * nb, res,
                                               !unpack && m == grouped && rows == GGUF_ROWS && n0 + 2 * GGUF_ROWS <= N
                                                   ? w + (n0 + GGUF_ROWS) * row_bytes : NULL);
                    else
#endif
                        gguf_chunk_token(qtype, parts, u, K, ws, wm, tail + (m - grouped) * nb, res);
                    for (int64_t r = 0; r < rows; ++r) out[m * ldo + n0 + r] = res[r];
                }
            }
        }
        free(u);
    }
    return failed;
}

/* out[m * ldo + n] for n < N from activations qx (gguf_quantize_act of the same M, K, parts) and the
 * weight's N rows of K / block_size blocks. Returns 0; 1: no memory; 2: unknown qtype, K off its block
 * or parts not 1 or 2. */
int gguf_matmul_q(float *out, int64_t ldo, const void *qx, int64_t M, int64_t K, const uint8_t *w, int64_t N,
                  int qtype, int parts, int threads) {
    return gguf_matmul(out, ldo, qx, M, K, w, N, qtype, parts, threads, 0);
}

/* The same on the portable path, one (row, token) at a time, whatever this build's instruction set: the
 * tests hold every SIMD path to it bit for bit. */
int gguf_matmul_reference(float *out, int64_t ldo, const void *qx, int64_t M, int64_t K, const uint8_t *w,
                          int64_t N, int qtype, int parts, int threads) {
    return gguf_matmul(out, ldo, qx, M, K, w, N, qtype, parts, threads, 1);
}

/* quantize x [M, K] float32 and multiply, in one call; returns as gguf_matmul_q */
int gguf_linear(float *out, int64_t ldo, const float *x, int64_t M, int64_t K, const uint8_t *w, int64_t N, int qtype,
                int parts, int threads) {
    const int bs = gguf_block_size(qtype);
    if (!bs || K <= 0 || K % bs || (parts != 1 && parts != 2)) return 2;
    if (M <= 0 || N <= 0) return 0;
    const int64_t bytes = gguf_act_bytes(M, K, parts);
    void *qx = aligned_alloc(64, (size_t)(bytes + 63) / 64 * 64);
    if (!qx) return 1;
    gguf_quantize_act(qx, x, M, K, parts, threads);
    const int rc = gguf_matmul_q(out, ldo, qx, M, K, w, N, qtype, parts, threads);
    free(qx);
    return rc;
}
