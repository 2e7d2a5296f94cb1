/* The int8-rows matmul of int8_rows_matmul.c (the LM head) on AMX int8 tiles.
 *
 * The table's rows go to the tiles as they are: 16 rows x 64 inputs are tile A, read straight from the
 * table (no copy, no conversion). A token's float32 activations go in as two int8 parts: x = s1 * a +
 * s2 * b + e, with a = round(x / s1) (s1 = max|x| / 127, as every dynamic-int8 Linear), b the same
 * rounding of what a leaves out, and |e| <= max|x| / 64516: about 16 bits per token, where the int8
 * weights hold 8. Both parts are laid out once per call as tile B (4 inputs of 16 tokens per row); their
 * int32 sums are exact, and each output is then (sum_a * s1 + sum_b * s2) * scale in float32, so a
 * token's logits are the same whatever else is in the batch (one token runs as a tile of 16 with 15
 * zero tokens). Used for every call of a model whose width is a multiple of 64, where the process may
 * use AMX; much faster than the AVX-512 float path on a batch of tokens, as fast on one.
 */
#include "amx.c"
#include "vector_math.c"
#if defined(HAVE_AMX_TILES) && defined(__AMX_INT8__) && defined(__AVX512F__)
#define HAVE_ROWS_AMX 1
#include <math.h>
#include <stdlib.h>

#define ROWS_TILE 16  /* tokens, or table rows, per tile */
#define ROWS_AHEAD 2  /* blocks of 16 table rows asked for ahead of the tiles */

static int rows_amx_usable(int64_t K) { return K % 64 == 0 && amx_ready(); }

/* x [M, K] -> parts[part][tile][K / 4][16 tokens][4] int8 (zero past M) and steps[part][tiles * 16]. */
static void split_tokens(int8_t *parts, float *steps, const float *x, int64_t M, int64_t K, int64_t tiles) {
    const int64_t part_size = tiles * ROWS_TILE * K, padded = tiles * ROWS_TILE;
    memset(parts, 0, (size_t)(2 * part_size));
    memset(steps, 0, sizeof(float) * (size_t)(2 * padded));
    for (int64_t m = 0; m < M; ++m) {
        const float *row = x + m * K;
        int8_t *a = parts + (m / ROWS_TILE) * ROWS_TILE * K + (m % ROWS_TILE) * 4, *b = a + part_size;
        const float amax = abs_max(row, K);
        const float s1 = amax / 127.f, inv1 = amax > 0.f ? 127.f / amax : 0.f;
        float rmax = 0.f;
        for (int64_t k = 0; k < K; ++k) {
            const float r = row[k] - nearbyintf(row[k] * inv1) * s1;
            rmax = rmax > fabsf(r) ? rmax : fabsf(r);
        }
        const float s2 = rmax / 127.f, inv2 = rmax > 0.f ? 127.f / rmax : 0.f;
        for (int64_t k = 0; k < K; ++k) {
            const float whole = nearbyintf(row[k] * inv1);
            const int64_t at = (k / 4) * ROWS_TILE * 4 + k % 4;  /* row k / 4 of the tile, this token's 4 */
            a[at] = (int8_t)whole;
            b[at] = (int8_t)nearbyintf((row[k] - whole * s1) * inv2);
        }
        steps[m] = s1, steps[padded + m] = s2;
    }
}

/* Returns 0, or 1 when memory ran out. */
static int int8_rows_amx(float *out, const float *x, const int8_t *q, const float *scale, int64_t M, int64_t K,
                         int64_t N, int threads) {
    const int64_t tiles = (M + ROWS_TILE - 1) / ROWS_TILE, padded = tiles * ROWS_TILE;
    const int64_t part_size = padded * K, tile_size = ROWS_TILE * K, row_blocks = (N + ROWS_TILE - 1) / ROWS_TILE;
    int8_t *parts = malloc((size_t)(2 * part_size));
    float *steps = malloc(sizeof(float) * (size_t)(2 * padded));
    if (!parts || !steps) {
        free(parts), free(steps);
        return 1;
    }
    split_tokens(parts, steps, x, M, K, tiles);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        int8_t *last = malloc((size_t)tile_size);  /* the table's last rows, padded to a whole tile */
        if (!last) {
#pragma omp atomic write
            failed = 1;
        } else {
            amx_configure();
        }
        int32_t sums[4][ROWS_TILE][ROWS_TILE];
        const __m512i column = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                  _mm512_set1_epi32(ROWS_TILE));
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < row_blocks; ++nb) {
            if (!last) continue;
            const int64_t n0 = nb * ROWS_TILE, width = N - n0 < ROWS_TILE ? N - n0 : ROWS_TILE;
            const int8_t *rows = q + n0 * K;
            if (width < ROWS_TILE) {  /* a tile load would read past the table */
                memset(last, 0, (size_t)tile_size);
                memcpy(last, rows, (size_t)(width * K));
                rows = last;
            }
            const __mmask16 cols = (__mmask16)((1u << width) - 1u);
            const __m512 ws = _mm512_maskz_loadu_ps(cols, scale + n0);
            for (int64_t t0 = 0; t0 < tiles; t0 += 2) {
                const int pair = tiles - t0 >= 2 ? 2 : 1;
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
                for (int64_t kb = 0; kb < K / 64; ++kb) {
                    if (t0 == 0)  /* a sixteenth of the block ROWS_AHEAD on (a thread's blocks lie end to end) */
                        for (int i = 0; i < 16; ++i)
                            _mm_prefetch((const char *)(q + (n0 + ROWS_AHEAD * ROWS_TILE) * K + kb * 1024 + 64 * i),
                                         _MM_HINT_T0);
                    /* tmm4: 16 table rows x 64 inputs; tmm5 / tmm6: part a / part b of 16 tokens */
                    const int8_t *b0 = parts + t0 * tile_size + kb * 16 * 64;
                    _tile_loadd(4, rows + kb * 64, K);
                    _tile_loadd(5, b0, 64);
                    _tile_dpbssd(0, 4, 5);
                    _tile_loadd(6, b0 + part_size, 64);
                    _tile_dpbssd(1, 4, 6);
                    if (pair == 2) {
                        _tile_loadd(5, b0 + tile_size, 64);
                        _tile_dpbssd(2, 4, 5);
                        _tile_loadd(6, b0 + tile_size + part_size, 64);
                        _tile_dpbssd(3, 4, 6);
                    }
                }
                _tile_stored(0, sums[0], 64);
                _tile_stored(1, sums[1], 64);
                if (pair == 2) {
                    _tile_stored(2, sums[2], 64);
                    _tile_stored(3, sums[3], 64);
                }
                /* sums[.][row][token]: each token's 16 rows are a column */
                for (int j = 0; j < pair; ++j)
                    for (int64_t t = 0; t < ROWS_TILE && (t0 + j) * ROWS_TILE + t < M; ++t) {
                        const int64_t m = (t0 + j) * ROWS_TILE + t;
                        const __m512 a = _mm512_cvtepi32_ps(_mm512_i32gather_epi32(column, &sums[2 * j][0][t], 4));
                        const __m512 b = _mm512_cvtepi32_ps(_mm512_i32gather_epi32(column, &sums[2 * j + 1][0][t], 4));
                        const __m512 v = _mm512_add_ps(_mm512_mul_ps(a, _mm512_set1_ps(steps[m])),
                                                       _mm512_mul_ps(b, _mm512_set1_ps(steps[padded + m])));
                        _mm512_mask_storeu_ps(out + m * N + n0, cols, _mm512_mul_ps(v, ws));
                    }
            }
        }
        if (last) _tile_release();
        free(last);
    }
    free(parts), free(steps);
    return failed;
}
#endif
