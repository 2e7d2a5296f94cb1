/* Dynamic int8 linear on CPU: y = x W^T + b with W int8 per output channel and x quantized per token
 * at call time, both symmetric (-127..127). The weight is stored once, in the layout below, at one byte
 * per value: no padded copy, no float copy.
 *
 * Packed weight: panels of 16 output columns; in a panel, for each group of 4 inputs, 64 bytes holding
 * column c's 4 values at [4c, 4c + 4). One 32-bit broadcast of a token's 4 inputs then meets 8 columns
 * per AVX2 register.
 *
 * Products: AVX2 multiplies u8 by s8 and sums pairs into int16. With |x| as the unsigned side and the
 * weight carrying x's sign (vpsignb), a pair sums to at most 2 * 127 * 127 = 32258: no saturation, so
 * every dot product is exact in int32 and the result does not depend on the kernel's blocking, on the
 * thread count, or on the other tokens of the batch.
 *
 * Where the CPU has them, two faster paths compute the same int32 sums, so the result is the same to the
 * bit whichever runs:
 * - AVX-512 VNNI: vpdpbusd multiplies u8 by s8 and adds 4 products straight into int32. The token goes
 *   in as x + 128 (unsigned), and 128 * (the column's weight sum) comes off at the end; one 512-bit
 *   register holds a whole panel.
 * - AMX: blocks of 16 tokens meet 16 columns in one tile instruction (s8 x s8 into int32); the panel
 *   layout is the tile's B layout already. From AMX_MIN_TOKENS tokens on, every token goes this way.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define HAVE_VNNI512 1
#endif
#include "amx.c"
#include "vector_math.c"
#if defined(HAVE_AMX_TILES) && defined(__AMX_INT8__)
#define HAVE_AMX 1
#endif

#define PANEL 16       /* output columns per packed panel */
#define PREFETCH_AHEAD 2048  /* bytes of weight asked for ahead of the VNNI loop */
#define ROW_BLOCK 64   /* tokens whose quantized inputs stay in L2 while every panel passes over them */

/* One token: int8 values, the unsigned side of the multiply (|x|, or x + 128 with VNNI), and the float
 * step of one unit. */
static void quantize_row(const float *x, int64_t K, int64_t Kp, int8_t *q, uint8_t *mag, float *step) {
    const float amax = abs_max(x, K);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    int64_t k0 = 0;
#ifdef HAVE_VNNI512
    /* 16 at a time: the conversion rounds half to even (the default rounding mode), as nearbyintf */
    for (; k0 + 16 <= K; k0 += 16) {
        const __m128i v = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k0),
                                                                                 _mm512_set1_ps(inv))));
        _mm_storeu_si128((__m128i *)(q + k0), v);
        _mm_storeu_si128((__m128i *)(mag + k0), _mm_xor_si128(v, _mm_set1_epi8((char)0x80)));  /* + 128 */
    }
#endif
    for (int64_t k = k0; k < K; ++k) {
        const int v = (int)nearbyintf(x[k] * inv);  /* round half to even, as torch.round */
        q[k] = (int8_t)v;
#ifdef HAVE_VNNI512
        mag[k] = (uint8_t)(v + 128);  /* the unsigned side of vpdpbusd: x + 128 */
#else
        mag[k] = (uint8_t)(v < 0 ? -v : v);  /* the unsigned side of vpmaddubsw: |x| */
#endif
    }
#ifdef HAVE_VNNI512
    for (int64_t k = K; k < Kp; ++k) q[k] = 0, mag[k] = 128;
#else
    for (int64_t k = K; k < Kp; ++k) q[k] = 0, mag[k] = 0;
#endif
    *step = amax / 127.f;
}

static inline int32_t load4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* int32 sums of `count` tokens x one panel -> their float outputs for columns n0.. (every path). */
static inline __attribute__((always_inline)) void store_panel(
        const int count, const int32_t (*acc)[PANEL], const float *steps, const float *w_scale,
        const float *bias, float *const *out, int64_t n0, int64_t N) {
    const int64_t width = N - n0 < PANEL ? N - n0 : PANEL;
#ifdef __AVX512F__
    /* the same three roundings as the loop below, 16 columns at a time (no fused multiply-add) */
    const __mmask16 cols = (__mmask16)((1u << width) - 1u);
    const __m512 ws = _mm512_maskz_loadu_ps(cols, w_scale + n0);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(cols, bias + n0) : _mm512_setzero_ps();
    for (int r = 0; r < count; ++r) {
        const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(acc[r])),
                                                     _mm512_set1_ps(steps[r])), ws);
        _mm512_mask_storeu_ps(out[r] + n0, cols, _mm512_add_ps(v, b));
    }
#else
    for (int r = 0; r < count; ++r)
        for (int64_t c = 0; c < width; ++c)
            out[r][n0 + c] = (float)acc[r][c] * steps[r] * w_scale[n0 + c] + (bias ? bias[n0 + c] : 0.f);
#endif
}

/* Rows r of `count` (1..4) tokens against one panel; writes their float outputs for columns n0.. */
static inline __attribute__((always_inline)) void panel_rows(
        const int count, const int8_t *const *q, const uint8_t *const *mag, const float *steps,
        const int8_t *panel, int64_t K4, const float *w_scale, const float *bias, float *const *out,
        int64_t n0, int64_t N, const int32_t *col_sums) {
    int32_t acc[4][PANEL];
#if defined(HAVE_VNNI512)
    /* even and odd groups into separate sums: two chains of vpdpbusd in flight, not one (int32 sums are
     * exact, so the split changes nothing) */
    __m512i even[4], odd[4], wsum_even = _mm512_setzero_si512(), wsum_odd = _mm512_setzero_si512();
    for (int r = 0; r < count; ++r) even[r] = odd[r] = _mm512_setzero_si512();
    const __m512i ones = _mm512_set1_epi8(1);
    int64_t g = 0;
    for (; g + 2 <= K4; g += 2) {
        /* a thread's panels lie end to end: ask for the bytes 2 KB ahead (into the next panel near the end)
         * so the stream does not stall at each new call while the hardware prefetcher picks it up again */
        _mm_prefetch((const char *)(panel + 64 * g + PREFETCH_AHEAD), _MM_HINT_T0);
        _mm_prefetch((const char *)(panel + 64 * g + PREFETCH_AHEAD + 64), _MM_HINT_T0);
        const __m512i w0 = _mm512_loadu_si512((const void *)(panel + 64 * g));
        const __m512i w1 = _mm512_loadu_si512((const void *)(panel + 64 * g + 64));
        if (!col_sums) {
            wsum_even = _mm512_dpbusd_epi32(wsum_even, ones, w0);
            wsum_odd = _mm512_dpbusd_epi32(wsum_odd, ones, w1);
        }
        for (int r = 0; r < count; ++r) {
            even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(load4(mag[r] + 4 * g)), w0);
            odd[r] = _mm512_dpbusd_epi32(odd[r], _mm512_set1_epi32(load4(mag[r] + 4 * g + 4)), w1);
        }
    }
    if (g < K4) {
        const __m512i w = _mm512_loadu_si512((const void *)(panel + 64 * g));
        if (!col_sums) wsum_even = _mm512_dpbusd_epi32(wsum_even, ones, w);
        for (int r = 0; r < count; ++r)
            even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(load4(mag[r] + 4 * g)), w);
    }
    /* 128 * the column's weight sum (packed beside the weight, or summed here) */
    const __m512i correction = _mm512_slli_epi32(
        col_sums ? _mm512_loadu_si512((const void *)(col_sums + n0)) : _mm512_add_epi32(wsum_even, wsum_odd), 7);
    for (int r = 0; r < count; ++r)
        _mm512_storeu_si512((void *)acc[r], _mm512_sub_epi32(_mm512_add_epi32(even[r], odd[r]), correction));
    (void)q;
#elif defined(__AVX2__)
    (void)col_sums;
    __m256i sum[4][2];
    for (int r = 0; r < count; ++r) sum[r][0] = sum[r][1] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t g = 0; g < K4; ++g) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(panel + 64 * g));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(panel + 64 * g + 32));
        for (int r = 0; r < count; ++r) {
            const __m256i m = _mm256_set1_epi32(load4(mag[r] + 4 * g));
            const __m256i s = _mm256_set1_epi32(load4(q[r] + 4 * g));
            sum[r][0] = _mm256_add_epi32(sum[r][0],
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(m, _mm256_sign_epi8(w0, s)), ones));
            sum[r][1] = _mm256_add_epi32(sum[r][1],
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(m, _mm256_sign_epi8(w1, s)), ones));
        }
    }
    for (int r = 0; r < count; ++r) {
        _mm256_storeu_si256((__m256i *)acc[r], sum[r][0]);
        _mm256_storeu_si256((__m256i *)(acc[r] + 8), sum[r][1]);
    }
#else
    for (int r = 0; r < count; ++r) {
        for (int c = 0; c < PANEL; ++c) acc[r][c] = 0;
        for (int64_t g = 0; g < K4; ++g)
            for (int c = 0; c < PANEL; ++c)
                for (int j = 0; j < 4; ++j) acc[r][c] += (int32_t)q[r][4 * g + j] * panel[64 * g + 4 * c + j];
    }
#endif
    store_panel(count, (const int32_t (*)[PANEL])acc, steps, w_scale, bias, out, n0, N);
}

#include "int8_linear_amx.c"

/* x [M, K] float32, packed weight of N columns and Kp = K rounded up to 4, w_scale [N], bias [N] or NULL,
 * out [M, N] float32; col_sums: each column's int32 weight sum, N rounded up to 16 (the VNNI path's
 * correction, else summed at every call), or NULL. Returns 0, or 1 when scratch memory cannot be had. */
int int8_linear(float *out, const float *x, const int8_t *packed, const float *w_scale, const float *bias,
                int64_t M, int64_t K, int64_t N, int64_t Kp, int threads, const int32_t *col_sums) {
    /* rows held: M, or M rounded up to whole tiles when AMX takes every token */
    int64_t held = M;
#ifdef HAVE_AMX
    const int all_amx = M >= AMX_MIN_TOKENS && Kp % 64 == 0 && amx_ready();
    if (all_amx) held = (M + AMX_ROWS - 1) / AMX_ROWS * AMX_ROWS;
#endif
    int8_t *q = malloc((size_t)(held * Kp) * 2);
    float *steps = malloc((size_t)held * sizeof(float));
    if (!q || !steps) {
        free(q), free(steps);
        return 1;
    }
    uint8_t *mag = (uint8_t *)(q + held * Kp);
#pragma omp parallel for num_threads(threads) schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; ++m) quantize_row(x + m * K, K, Kp, q + m * Kp, mag + m * Kp, steps + m);

    int64_t first = 0;  /* tokens before it went through AMX */
#ifdef HAVE_AMX
    if (all_amx) {  /* the last tile's padding rows are zero tokens, their outputs never written */
        memset(q + M * Kp, 0, (size_t)((held - M) * Kp));
        for (int64_t m = M; m < held; ++m) steps[m] = 0.f;
        amx_rows(q, held, packed, Kp, steps, w_scale, bias, out, N, threads, M);
        first = M;
    }
#endif
    const int64_t panels = (N + PANEL - 1) / PANEL, K4 = Kp / 4;
    const int64_t blocks = (M - first + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static) if (blocks > 0)
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t p = 0; p < panels; ++p) {
            const int8_t *panel = packed + p * PANEL * Kp;
            const int64_t end = first + (b + 1) * ROW_BLOCK < M ? first + (b + 1) * ROW_BLOCK : M;
            for (int64_t m = first + b * ROW_BLOCK; m < end; m += 4) {
                const int8_t *qs[4];
                const uint8_t *ms[4];
                float *os[4];
                const int count = end - m < 4 ? (int)(end - m) : 4;
                for (int r = 0; r < count; ++r)
                    qs[r] = q + (m + r) * Kp, ms[r] = mag + (m + r) * Kp, os[r] = out + (m + r) * N;
                /* constant counts, so each case compiles to its own fully unrolled kernel */
                switch (count) {
                    case 4: panel_rows(4, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N, col_sums); break;
                    case 3: panel_rows(3, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N, col_sums); break;
                    case 2: panel_rows(2, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N, col_sums); break;
                    default: panel_rows(1, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N, col_sums); break;
                }
            }
        }
    free(q), free(steps);
    return 0;
}
