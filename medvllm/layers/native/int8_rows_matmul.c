/* Weight-only int8 matmul on CPU: y[m][n] = scale[n] * sum_k x[m][k] * q[n][k], x float32, q int8 rows
 * (one symmetric scale per row), y float32. For the LM head: its rows are the token embedding's rows,
 * so one int8 table serves both, and the activations stay float (no per-token rounding of the hidden
 * state the logits come from).
 *
 * Each int8 weight is widened to float in registers and met by fused multiply-adds: 6 rows at a time
 * for one token (enough independent sums in flight; 8 spilled two of them to the stack, ~10% slower),
 * blocks of 4 tokens x 3 rows for more (each widened vector used 4 times). Widening into a float buffer
 * instead was 1.6x slower here: it reads 4x the bytes from L2. One output is the same float32 dot
 * product of the row's K products, summed in 8 lanes and then across them, whatever the blocking: a
 * token's result does not depend on the other tokens of the batch or on the thread count.
 *
 * Built at first use by medvllm/layers/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define TOKENS 4       /* tokens per register block */
#define ROWS 6         /* most weight rows per register block */
#define ROW_CHUNK 96   /* weight rows a thread takes at a time (a multiple of 3 and 6) */

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 widen8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#endif

/* `t` tokens (1..TOKENS) x `r` rows (1..ROWS): out[i][j] = scale[j] * dot(x[i], q[j]). */
static inline __attribute__((always_inline)) void block(
        const int t, const int r, const float *const *x, const int8_t *const *q, const float *scale,
        float *const *out, int64_t K) {
    float dot[TOKENS][ROWS];
    int64_t k = 0;
#ifdef __AVX2__
    __m256 acc[TOKENS][ROWS];
    for (int i = 0; i < t; ++i)
        for (int j = 0; j < r; ++j) acc[i][j] = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) {
        __m256 w[ROWS];
        for (int j = 0; j < r; ++j) w[j] = widen8(q[j] + k);
        for (int i = 0; i < t; ++i) {
            const __m256 xv = _mm256_loadu_ps(x[i] + k);
            for (int j = 0; j < r; ++j) acc[i][j] = _mm256_fmadd_ps(xv, w[j], acc[i][j]);
        }
    }
    for (int i = 0; i < t; ++i)
        for (int j = 0; j < r; ++j) dot[i][j] = hsum(acc[i][j]);
#else
    for (int i = 0; i < t; ++i)
        for (int j = 0; j < r; ++j) dot[i][j] = 0.f;
#endif
    for (; k < K; ++k)
        for (int i = 0; i < t; ++i)
            for (int j = 0; j < r; ++j) dot[i][j] += x[i][k] * (float)q[j][k];
    for (int i = 0; i < t; ++i)
        for (int j = 0; j < r; ++j) out[i][j] = dot[i][j] * scale[j];
}

/* Constant counts, so each case compiles to its own unrolled kernel. */
static void dispatch(int t, int r, const float *const *x, const int8_t *const *q, const float *scale,
                     float *const *out, int64_t K) {
#define CASE(T, R) if (t == T && r == R) { block(T, R, x, q, scale, out, K); return; }
    CASE(1, 6) CASE(1, 5) CASE(1, 4) CASE(1, 3) CASE(1, 2) CASE(1, 1)
    CASE(2, 3) CASE(2, 2) CASE(2, 1) CASE(3, 3) CASE(3, 2) CASE(3, 1) CASE(4, 3) CASE(4, 2) CASE(4, 1)
#undef CASE
}

/* x [M, K] float32, q [N, K] int8, scale [N] float32, out [M, N] float32. */
void int8_rows_matmul(float *out, const float *x, const int8_t *q, const float *scale,
                      int64_t M, int64_t K, int64_t N, int threads) {
    const int64_t chunks = (N + ROW_CHUNK - 1) / ROW_CHUNK;
    /* one token: 6 rows at a time keep 6 sums in flight; more: 4 x 3 blocks reuse each widened vector */
    const int rows_at_once = M == 1 ? 6 : 3;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t first = c * ROW_CHUNK, end = first + ROW_CHUNK < N ? first + ROW_CHUNK : N;
        /* a block of rows stays in L1 while the tokens pass over it */
        for (int64_t n = first; n < end; n += rows_at_once) {
            const int r = end - n < rows_at_once ? (int)(end - n) : rows_at_once;
            const int8_t *qs[ROWS];
            for (int j = 0; j < r; ++j) qs[j] = q + (n + j) * K;
            for (int64_t m = 0; m < M; m += TOKENS) {
                const int t = M - m < TOKENS ? (int)(M - m) : TOKENS;
                const float *xs[TOKENS];
                float *os[TOKENS];
                for (int i = 0; i < t; ++i) xs[i] = x + (m + i) * K, os[i] = out + (m + i) * N + n;
                dispatch(t, r, xs, qs, scale + n, os, K);
            }
        }
    }
}
