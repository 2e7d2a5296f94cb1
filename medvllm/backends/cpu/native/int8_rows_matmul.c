/* Weight-only int8 matmul on CPU: y[m][n] = sum_k x[m][k] * (q[n][k] * scale[n][k / G]), x float32, q int8
 * rows with one symmetric scale per row and group of G inputs, y float32. For the LM head: its rows are
 * the token embedding's rows, so one int8 table serves both, and the activations stay float (no
 * per-token rounding of the hidden state the logits come from).
 *
 * Each int8 weight is widened to float in registers, scaled by its group's scale and met by fused
 * multiply-adds. AVX2 (16 registers
 * of 8 lanes): 6 rows at a time for one token (8 spilled two sums to the stack and ran slower), blocks of
 * 4 tokens x 3 rows for more (each widened vector used 4 times). AVX-512 (32 registers of 16 lanes):
 * 8 rows for one token, 4 tokens x 6 rows for more. Widening into a float buffer instead was
 * slower: it reads 4x the bytes from L2. One output is the same float32 dot product of the row's K
 * products, summed in the vector's lanes and then across them, whatever the blocking: a token's result
 * does not depend on the other tokens of the batch or on the thread count.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#include "int8_rows_amx.c"
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define TOKENS 4       /* tokens per register block */
#define ROW_CHUNK 96   /* weight rows a thread takes at a time (a multiple of 3, 6 and 8) */

#ifdef __AVX512F__
/* 32 registers of 16 lanes: 8 rows for one token, 4 tokens x 6 rows for more */
#define ROWS 8
#define ONE_TOKEN_ROWS 8
#define BLOCK_ROWS 6
#define LANES 16
typedef __m512 vec;
static inline vec widen(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline float hsum(vec v) { return _mm512_reduce_add_ps(v); }
#define vzero _mm512_setzero_ps
#define vload _mm512_loadu_ps
#define vfmadd _mm512_fmadd_ps
#define vmul _mm512_mul_ps
#define vset1 _mm512_set1_ps
#elif defined(__AVX2__)
#define ROWS 6
#define ONE_TOKEN_ROWS 6
#define BLOCK_ROWS 3
#define LANES 8
typedef __m256 vec;
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline vec widen(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#define vzero _mm256_setzero_ps
#define vload _mm256_loadu_ps
#define vfmadd _mm256_fmadd_ps
#define vmul _mm256_mul_ps
#define vset1 _mm256_set1_ps
#else
#define ROWS 6
#define ONE_TOKEN_ROWS 6
#define BLOCK_ROWS 3
#endif

/* `t` tokens (1..TOKENS) x `r` rows (1..ROWS): out[i][j] = dot(x[i], q[j] scaled per group). scale: row
 * j's group g at scale[j * ng + g]. Groups of G inputs (a multiple of LANES where there are several):
 * the vector sums run over whole vectors of every group, then the inputs left over (K % LANES, in the
 * last group) one by one. */
static inline __attribute__((always_inline)) void block(
        const int t, const int r, const float *const *x, const int8_t *const *q, const float *scale,
        float *const *out, int64_t K, int64_t G, int64_t ng) {
    float dot[TOKENS][ROWS];
    int64_t k = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
    vec acc[TOKENS][ROWS];
    for (int i = 0; i < t; ++i)
        for (int j = 0; j < r; ++j) acc[i][j] = vzero();
    for (int64_t g = 0; g < ng; ++g) {
        const int64_t end = g == ng - 1 ? K : (g + 1) * G;
        vec s[ROWS];
        for (int j = 0; j < r; ++j) s[j] = vset1(scale[j * ng + g]);
        for (; k + LANES <= end; k += LANES) {
            vec w[ROWS];
            for (int j = 0; j < r; ++j) w[j] = vmul(widen(q[j] + k), s[j]);
            for (int i = 0; i < t; ++i) {
                const vec xv = vload(x[i] + k);
                for (int j = 0; j < r; ++j) acc[i][j] = vfmadd(xv, w[j], acc[i][j]);
            }
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
            for (int j = 0; j < r; ++j) dot[i][j] += x[i][k] * ((float)q[j][k] * scale[j * ng + k / G]);
    for (int i = 0; i < t; ++i)
        for (int j = 0; j < r; ++j) out[i][j] = dot[i][j];
}

/* Constant counts, so each case compiles to its own unrolled kernel. */
static void dispatch(int t, int r, const float *const *x, const int8_t *const *q, const float *scale,
                     float *const *out, int64_t K, int64_t G, int64_t ng) {
#define CASE(T, R) if (t == T && r == R) { block(T, R, x, q, scale, out, K, G, ng); return; }
#define TOKEN_CASES(T) CASE(T, 6) CASE(T, 5) CASE(T, 4) CASE(T, 3) CASE(T, 2) CASE(T, 1)
#if ROWS == 8
    CASE(1, 8) CASE(1, 7)
#endif
    TOKEN_CASES(1) TOKEN_CASES(2) TOKEN_CASES(3) TOKEN_CASES(4)
#undef TOKEN_CASES
#undef CASE
}

/* Whether calls of this width and group take the AMX path (int8_rows_amx.c, one scale per row: G >= K):
 * the same answer for every call. */
int int8_rows_uses_amx(int64_t K, int64_t G) {
#ifdef HAVE_ROWS_AMX
    return G >= K && rows_amx_usable(K);
#else
    (void)K, (void)G;
    return 0;
#endif
}

/* x [M, K] float32, q [N, K] int8, scale [N, ceil(K / G)] float32 (G a multiple of 16, or >= K: one
 * scale per row), out [M, N] float32. Returns 0, or 1 when memory ran out. */
int int8_rows_matmul(float *out, const float *x, const int8_t *q, const float *scale,
                     int64_t M, int64_t K, int64_t N, int64_t G, int threads) {
#ifdef HAVE_ROWS_AMX
    if (int8_rows_uses_amx(K, G)) return int8_rows_amx(out, x, q, scale, M, K, N, threads);
#endif
    const int64_t ng = (K + G - 1) / G;
    const int64_t chunks = (N + ROW_CHUNK - 1) / ROW_CHUNK;
    /* one token: several rows at a time keep that many sums in flight; more: blocks of 4 tokens reuse
     * each widened vector 4 times */
    const int rows_at_once = M == 1 ? ONE_TOKEN_ROWS : BLOCK_ROWS;
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
                dispatch(t, r, xs, qs, scale + n * ng, os, K, G, ng);
            }
        }
    }
    return 0;
}
