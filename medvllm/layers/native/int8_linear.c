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
 * Built at first use by medvllm/layers/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define PANEL 16       /* output columns per packed panel */
#define ROW_BLOCK 64   /* tokens whose quantized inputs stay in L2 while every panel passes over them */

/* One token: int8 values (sign carried), their magnitudes, and the float step of one unit. */
static void quantize_row(const float *x, int64_t K, int64_t Kp, int8_t *q, uint8_t *mag, float *step) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = fmaxf(amax, fabsf(x[k]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t k = 0; k < K; ++k) {
        const int v = (int)nearbyintf(x[k] * inv);  /* round half to even, as torch.round */
        q[k] = (int8_t)v;
        mag[k] = (uint8_t)(v < 0 ? -v : v);
    }
    for (int64_t k = K; k < Kp; ++k) q[k] = 0, mag[k] = 0;
    *step = amax / 127.f;
}

static inline int32_t load4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Rows r of `count` (1..4) tokens against one panel; writes their float outputs for columns n0.. */
static inline __attribute__((always_inline)) void panel_rows(
        const int count, const int8_t *const *q, const uint8_t *const *mag, const float *steps,
        const int8_t *panel, int64_t K4, const float *w_scale, const float *bias, float *const *out,
        int64_t n0, int64_t N) {
    int32_t acc[4][PANEL];
#ifdef __AVX2__
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
    const int64_t width = N - n0 < PANEL ? N - n0 : PANEL;
    for (int r = 0; r < count; ++r)
        for (int64_t c = 0; c < width; ++c)
            out[r][n0 + c] = (float)acc[r][c] * steps[r] * w_scale[n0 + c] + (bias ? bias[n0 + c] : 0.f);
}

/* x [M, K] float32, packed weight of N columns and Kp = K rounded up to 4, w_scale [N], bias [N] or NULL,
 * out [M, N] float32. Returns 0, or 1 when scratch memory cannot be had. */
int int8_linear(float *out, const float *x, const int8_t *packed, const float *w_scale, const float *bias,
                int64_t M, int64_t K, int64_t N, int64_t Kp, int threads) {
    int8_t *q = malloc((size_t)(M * Kp) * 2);
    float *steps = malloc((size_t)M * sizeof(float));
    if (!q || !steps) {
        free(q), free(steps);
        return 1;
    }
    uint8_t *mag = (uint8_t *)(q + M * Kp);
#pragma omp parallel for num_threads(threads) schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; ++m) quantize_row(x + m * K, K, Kp, q + m * Kp, mag + m * Kp, steps + m);

    const int64_t panels = (N + PANEL - 1) / PANEL, blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK, K4 = Kp / 4;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t p = 0; p < panels; ++p) {
            const int8_t *panel = packed + p * PANEL * Kp;
            const int64_t end = (b + 1) * ROW_BLOCK < M ? (b + 1) * ROW_BLOCK : M;
            for (int64_t m = b * ROW_BLOCK; m < end; m += 4) {
                const int8_t *qs[4];
                const uint8_t *ms[4];
                float *os[4];
                const int count = end - m < 4 ? (int)(end - m) : 4;
                for (int r = 0; r < count; ++r)
                    qs[r] = q + (m + r) * Kp, ms[r] = mag + (m + r) * Kp, os[r] = out + (m + r) * N;
                /* constant counts, so each case compiles to its own fully unrolled kernel */
                switch (count) {
                    case 4: panel_rows(4, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N); break;
                    case 3: panel_rows(3, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N); break;
                    case 2: panel_rows(2, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N); break;
                    default: panel_rows(1, qs, ms, steps + m, panel, K4, w_scale, bias, os, p * PANEL, N); break;
                }
            }
        }
    free(q), free(steps);
    return 0;
}
