/* Float32 linear on weights packed once into K-major panels: y = x W^T + b for any number of rows.
 *
 * The plain [N, K] weight suits a dot product per output, which reuses a weight row for one token at a
 * time. Here each panel holds 48 output columns laid out by k ([K][48], zero past the last column), so
 * a tile of 8 tokens x 48 columns keeps 24 vector accumulators: every k loads three vectors of the panel
 * and broadcasts 8 inputs into 24 fused multiply-adds. A panel is read from memory once per 256 tokens
 * and served from L2 to every 8-token tile; while a thread works on one panel, its tiles prefetch the
 * next one into L2, a share each, so the weight stream overlaps the arithmetic. Against PyTorch's
 * F.linear (MKL) and the plain-weight kernel it is faster from one token to batches of decode size; on
 * long prompts MKL's large-matrix blocking is ahead.
 *
 * Every output is one chain of multiply-adds over k in order, then + bias: a token's result does not
 * depend on the other tokens of the call. With AVX2 (16 registers) a tile is 6 tokens x a third of a panel;
 * without either, the same loops in plain C.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define PANEL_COLS 48   /* output columns per panel: three 16-float vectors */
#define CHUNK_ROWS 256  /* tokens that share one pass over the weight */
#if defined(__AVX512F__)
#define TILE_ROWS 8  /* tokens per tile: 8 x 3 accumulators of the 32 vector registers */
#elif defined(__AVX2__) && defined(__FMA__)
#define TILE_ROWS 6  /* 6 tokens x 16 columns (a third of a panel) at a time: 12 of the 16 registers */
#else
#define TILE_ROWS 8
#endif

/* Floats the packed form of an [N, K] weight takes. */
int64_t f32_panels_size(int64_t N, int64_t K) { return (N + PANEL_COLS - 1) / PANEL_COLS * K * PANEL_COLS; }

/* w [N, K] row-major -> dst [panels][K][PANEL_COLS]. */
void f32_panels_pack(float *dst, const float *w, int64_t N, int64_t K, int threads) {
    const int64_t panels = (N + PANEL_COLS - 1) / PANEL_COLS;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t k = 0; k < K; ++k) {
            float *row = dst + (p * K + k) * PANEL_COLS;
            for (int64_t j = 0; j < PANEL_COLS; ++j) {
                const int64_t n = p * PANEL_COLS + j;
                row[j] = n < N ? w[n * K + k] : 0.f;
            }
        }
}

#ifdef __AVX512F__
/* R tokens (x rows of K) x one panel's `cols` columns into out (row stride ldo). `prefetch`: a share of
 * the next panel, touched at `step` bytes per k (the panel's own first line, step 0, for the last). */
static inline __attribute__((always_inline)) void panel_tile(float *out, int64_t ldo, const float *x, int64_t K,
                                                             const float *panel, const float *bias, int R, int cols,
                                                             const char *prefetch, int64_t step) {
    /* named accumulators, not an array: with an array gcc stored every sum to the stack at every k */
#define ROW_DECLARE(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = c##r##0, c##r##2 = c##r##0;
#define ROW_STEP(r)                                                                        \
    if (R > r) {                                                                           \
        const __m512 a = _mm512_set1_ps(x[r * K + k]);                                     \
        c##r##0 = _mm512_fmadd_ps(a, b0, c##r##0);                                         \
        c##r##1 = _mm512_fmadd_ps(a, b1, c##r##1);                                         \
        c##r##2 = _mm512_fmadd_ps(a, b2, c##r##2);                                         \
    }
#define ROW_STORE(r)                                                                       \
    if (R > r) {                                                                           \
        const __m512 sums[3] = {c##r##0, c##r##1, c##r##2};                                \
        for (int i = 0; i < 3 && cols > 16 * i; ++i)                                       \
            _mm512_mask_storeu_ps(out + r * ldo + 16 * i, mask[i], _mm512_add_ps(sums[i], bv[i])); \
    }
    ROW_DECLARE(0) ROW_DECLARE(1) ROW_DECLARE(2) ROW_DECLARE(3)
    ROW_DECLARE(4) ROW_DECLARE(5) ROW_DECLARE(6) ROW_DECLARE(7)
    for (int64_t k = 0; k < K; ++k) {
        const float *b = panel + k * PANEL_COLS;
        _mm_prefetch(prefetch + k * step, _MM_HINT_T1);
        const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
        ROW_STEP(0) ROW_STEP(1) ROW_STEP(2) ROW_STEP(3) ROW_STEP(4) ROW_STEP(5) ROW_STEP(6) ROW_STEP(7)
    }
    __mmask16 mask[3];
    __m512 bv[3];
    for (int i = 0; i < 3; ++i) {
        const int left = cols - 16 * i;
        mask[i] = left >= 16 ? (__mmask16)0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        bv[i] = bias ? _mm512_maskz_loadu_ps(mask[i], bias + 16 * i) : _mm512_setzero_ps();
    }
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5) ROW_STORE(6) ROW_STORE(7)
#undef ROW_DECLARE
#undef ROW_STEP
#undef ROW_STORE
}

/* The tile with its row count a constant, so each size gets registers of its own. */
static void panel_tiles(float *out, int64_t ldo, const float *x, int64_t K, const float *panel, const float *bias,
                        int R, int cols, const char *prefetch, int64_t step) {
#define TILE(n) case n: panel_tile(out, ldo, x, K, panel, bias, n, cols, prefetch, step); break;
    switch (R) { TILE(8) TILE(7) TILE(6) TILE(5) TILE(4) TILE(3) TILE(2) default: TILE(1) }
#undef TILE
}
#elif defined(__AVX2__) && defined(__FMA__)
/* R <= 6 tokens x `cols` <= 16 columns of a panel third (`panel` points at the third's first column). */
static inline __attribute__((always_inline)) void third_tile(float *out, int64_t ldo, const float *x, int64_t K,
                                                             const float *panel, const float *bias, int R, int cols,
                                                             const char *prefetch, int64_t step) {
    /* named accumulators, not an array (see panel_tile) */
#define ROW_DECLARE(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = c##r##0;
#define ROW_STEP(r)                                                                        \
    if (R > r) {                                                                           \
        const __m256 a = _mm256_broadcast_ss(x + r * K + k);                               \
        c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                                         \
        c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);                                         \
    }
#define ROW_STORE(r)                                                                       \
    if (R > r) {                                                                           \
        float row[16];                                                                     \
        _mm256_storeu_ps(row, c##r##0);                                                    \
        _mm256_storeu_ps(row + 8, c##r##1);                                                \
        for (int j = 0; j < cols; ++j) out[r * ldo + j] = row[j] + (bias ? bias[j] : 0.f); \
    }
    ROW_DECLARE(0) ROW_DECLARE(1) ROW_DECLARE(2) ROW_DECLARE(3) ROW_DECLARE(4) ROW_DECLARE(5)
    for (int64_t k = 0; k < K; ++k) {
        const float *b = panel + k * PANEL_COLS;
        _mm_prefetch(prefetch + k * step, _MM_HINT_T1);
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        ROW_STEP(0) ROW_STEP(1) ROW_STEP(2) ROW_STEP(3) ROW_STEP(4) ROW_STEP(5)
    }
    ROW_STORE(0) ROW_STORE(1) ROW_STORE(2) ROW_STORE(3) ROW_STORE(4) ROW_STORE(5)
#undef ROW_DECLARE
#undef ROW_STEP
#undef ROW_STORE
}

static void panel_tiles(float *out, int64_t ldo, const float *x, int64_t K, const float *panel, const float *bias,
                        int R, int cols, const char *prefetch, int64_t step) {
    for (int third = 0; third < 3 && cols > 16 * third; ++third) {
        const int c = cols - 16 * third < 16 ? cols - 16 * third : 16;
        const float *b = bias ? bias + 16 * third : 0;
        const int64_t pf_step = third == 0 ? step : 0;  /* the share once, by the first third */
#define TILE(n) case n: third_tile(out + 16 * third, ldo, x, K, panel + 16 * third, b, n, c, prefetch, pf_step); break;
        switch (R) { TILE(6) TILE(5) TILE(4) TILE(3) TILE(2) default: TILE(1) }
#undef TILE
    }
}
#else
static void panel_tiles(float *out, int64_t ldo, const float *x, int64_t K, const float *panel, const float *bias,
                        int R, int cols, const char *prefetch, int64_t step) {
    (void)prefetch, (void)step;
    for (int r = 0; r < R; ++r) {
        float acc[PANEL_COLS] = {0};
        for (int64_t k = 0; k < K; ++k) {
            const float a = x[r * K + k], *b = panel + k * PANEL_COLS;
            for (int j = 0; j < PANEL_COLS; ++j) acc[j] += a * b[j];
        }
        for (int j = 0; j < cols; ++j) out[r * ldo + j] = acc[j] + (bias ? bias[j] : 0.f);
    }
}
#endif

/* x [M, K], packed from an [N, K] weight, bias [N] or NULL, out [M, N]. */
void f32_panels_linear(float *out, const float *x, const float *packed, const float *bias, int64_t M, int64_t K,
                       int64_t N, int threads) {
    const int64_t panels = (N + PANEL_COLS - 1) / PANEL_COLS, panel_bytes = K * PANEL_COLS * (int64_t)sizeof(float);
    for (int64_t m0 = 0; m0 < M; m0 += CHUNK_ROWS) {
        const int64_t rows = M - m0 < CHUNK_ROWS ? M - m0 : CHUNK_ROWS, tiles = (rows + TILE_ROWS - 1) / TILE_ROWS;
        /* each tile of a panel prefetches its share of the next panel, spread over its k loop */
        const int64_t share = (panel_bytes + tiles - 1) / tiles, step = (share + K - 1) / K;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && panels > 1)
        for (int64_t p = 0; p < panels; ++p) {
            const float *panel = packed + p * K * PANEL_COLS;
            const char *next = p + 1 < panels ? (const char *)(panel + K * PANEL_COLS) : 0;
            const int cols = N - p * PANEL_COLS < PANEL_COLS ? (int)(N - p * PANEL_COLS) : PANEL_COLS;
            for (int64_t t = 0; t < tiles; ++t) {
                const int64_t r = t * TILE_ROWS;
                const int R = rows - r < TILE_ROWS ? (int)(rows - r) : TILE_ROWS;
                panel_tiles(out + (m0 + r) * N + p * PANEL_COLS, N, x + (m0 + r) * K, K, panel,
                            bias ? bias + p * PANEL_COLS : 0, R, cols,
                            next ? next + t * share : (const char *)panel, next ? step : 0);
            }
        }
    }
}
