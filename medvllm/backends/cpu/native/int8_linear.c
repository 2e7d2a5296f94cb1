/* Dynamic int8 linear on CPU: y = x W^T + b with W int8 per output channel and per group of G inputs,
 * and x quantized per token and per group of G inputs at call time, both symmetric (-127..127): one
 * outlier input costs precision only to its own group, not to the whole row. The weight is stored once,
 * in the layout below, at one byte per value: no padded copy, no float copy. Without calibration: every
 * activation scale is taken from the token itself.
 *
 * Packed weight: panels of 16 output columns; in a panel, for each group of 4 inputs, 64 bytes holding
 * column c's 4 values at [4c, 4c + 4). One 32-bit broadcast of a token's 4 inputs then meets 8 columns
 * per AVX2 register. Beside it, per panel and per group of G inputs (G a multiple of 4 up to 256; the
 * last group may be shorter), 16 float32 weight scales and 16 int16 column sums (|sum| <= 127 G):
 * [panels, groups, 16] each.
 *
 * Each group's dot product is an exact int32 sum (and exact in float32: |sum| < 2^24); a token's output
 * is then, in float32, groups in order, with one rounded product of the steps and one fused
 * multiply-add per group (correctly rounded wherever it runs):
 *     t_0 = 0,  t_g+1 = fma((float)s_g, xs_g * ws_g, t_g),  y = t_groups + b
 * the same operations on every path, so the result does not depend on the instruction set, the
 * kernel's blocking, the thread count, or the other tokens of the batch. (-std=c11 keeps C from
 * contracting anything else.)
 *
 * Products: AVX2 multiplies u8 by s8 and sums pairs into int16. With |x| as the unsigned side and the
 * weight carrying x's sign (vpsignb), a pair sums to at most 2 * 127 * 127 = 32258: no saturation, so
 * every group's dot product is exact in int32.
 *
 * Where the CPU has them, two faster paths compute the same int32 sums:
 * - AVX-512 VNNI: vpdpbusd multiplies u8 by s8 and adds 4 products straight into int32. The token goes
 *   in as x + 128 (unsigned), and 128 * (the column's weight sum over the group) comes off; one 512-bit
 *   register holds a whole panel.
 * - AMX: blocks of 16 tokens meet 16 columns in one tile instruction (s8 x s8 into int32); the panel
 *   layout is the tile's B layout already. From AMX_MIN_TOKENS tokens on, every token goes this way when
 *   G is a multiple of the tile depth (64).
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

/* One token, per group of G inputs: int8 values, the unsigned side of the multiply (|x|, or x + 128 with
 * VNNI), and the group's float step (steps[group]). */
static void quantize_row(const float *x, int64_t K, int64_t Kp, int64_t G, int8_t *q, uint8_t *mag, float *steps) {
    for (int64_t g0 = 0, gi = 0; g0 < K; g0 += G, ++gi) {
        const int64_t end = g0 + G < K ? g0 + G : K;
        const float amax = abs_max(x + g0, end - g0);
        const float inv = amax > 0.f ? 127.f / amax : 0.f;
        int64_t k0 = g0;
#ifdef HAVE_VNNI512
        /* 16 at a time: the conversion rounds half to even (the default rounding mode), as nearbyintf */
        for (; k0 + 16 <= end; k0 += 16) {
            const __m128i v = _mm512_cvtepi32_epi8(
                _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k0), _mm512_set1_ps(inv))));
            _mm_storeu_si128((__m128i *)(q + k0), v);
            _mm_storeu_si128((__m128i *)(mag + k0), _mm_xor_si128(v, _mm_set1_epi8((char)0x80)));  /* + 128 */
        }
#endif
        for (int64_t k = k0; k < end; ++k) {
            const int v = (int)nearbyintf(x[k] * inv);  /* round half to even, as torch.round */
            q[k] = (int8_t)v;
#ifdef HAVE_VNNI512
            mag[k] = (uint8_t)(v + 128);  /* the unsigned side of vpdpbusd: x + 128 */
#else
            mag[k] = (uint8_t)(v < 0 ? -v : v);  /* the unsigned side of vpmaddubsw: |x| */
#endif
        }
        steps[gi] = amax / 127.f;
    }
#ifdef HAVE_VNNI512
    for (int64_t k = K; k < Kp; ++k) q[k] = 0, mag[k] = 128;
#else
    for (int64_t k = K; k < Kp; ++k) q[k] = 0, mag[k] = 0;
#endif
}

static inline int32_t load4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* One group's share of `count` tokens' outputs (16 columns): total = fmaf((float)acc, step * w_scale,
 * total), as the VNNI path does in registers: the product of the steps rounded, then one fused
 * multiply-add, correctly rounded on every path (an instruction where the target has FMA, else libm's
 * fmaf). steps: the first token's step of this group, the next token's `stride` floats on. */
static inline __attribute__((always_inline)) void fold_group(
        const int count, const int32_t (*acc)[PANEL], const float *steps, int64_t stride, const float *ws,
        float (*total)[PANEL]) {
    for (int r = 0; r < count; ++r)
        for (int c = 0; c < PANEL; ++c)
            total[r][c] = fmaf((float)acc[r][c], steps[r * stride] * ws[c], total[r][c]);
}

/* Float sums of `count` tokens x one panel -> their outputs for columns n0.. (+ bias). */
static inline __attribute__((always_inline)) void store_panel(
        const int count, const float (*total)[PANEL], const float *bias, float *const *out, int64_t n0, int64_t N) {
    const int64_t width = N - n0 < PANEL ? N - n0 : PANEL;
    for (int r = 0; r < count; ++r)
        for (int64_t c = 0; c < width; ++c) out[r][n0 + c] = total[r][c] + (bias ? bias[n0 + c] : 0.f);
}

/* Rows r of `count` (1..4) tokens against one panel; writes their float outputs for columns n0...
 * steps: row 0's group steps ([groups] per row); w_scale, col_sums: this panel's [groups, 16]; G4: the
 * group size in groups of 4 inputs. */
static inline __attribute__((always_inline)) void panel_rows(
        const int count, const int8_t *const *q, const uint8_t *const *mag, const float *steps, int64_t ng,
        const int8_t *panel, int64_t K4, int64_t G4, const float *w_scale, const int16_t *col_sums,
        const float *bias, float *const *out, int64_t n0, int64_t N) {
#if defined(HAVE_VNNI512)
    (void)q;
    /* up to 2 tokens, even and odd groups of 4 into separate sums: two chains of vpdpbusd in flight per
     * token, not one (3 or 4 tokens have enough chains without) */
    const int split = count <= 2;
    __m512 total[4];
    for (int r = 0; r < count; ++r) total[r] = _mm512_setzero_ps();
    for (int64_t gi = 0, s = 0; s < K4; ++gi, s += G4) {
        const int64_t e = s + G4 < K4 ? s + G4 : K4;
        /* the sums start at -128 * the group's column sums, which x + 128 adds back: exact int32 sums */
        const __m512i start = _mm512_sub_epi32(
            _mm512_setzero_si512(),
            _mm512_slli_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(col_sums + PANEL * gi))), 7));
        __m512i even[4], odd[4];
        for (int r = 0; r < count; ++r) even[r] = start, odd[r] = _mm512_setzero_si512();
        int64_t g = s;
        for (; g + 2 <= e; g += 2) {
            /* a thread's panels lie end to end: ask for the bytes 2 KB ahead (into the next panel near the
             * end) so the stream does not stall at each new call while the hardware prefetcher picks it up */
            _mm_prefetch((const char *)(panel + 64 * g + PREFETCH_AHEAD), _MM_HINT_T0);
            _mm_prefetch((const char *)(panel + 64 * g + PREFETCH_AHEAD + 64), _MM_HINT_T0);
            const __m512i w0 = _mm512_loadu_si512((const void *)(panel + 64 * g));
            const __m512i w1 = _mm512_loadu_si512((const void *)(panel + 64 * g + 64));
            for (int r = 0; r < count; ++r) {
                even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(load4(mag[r] + 4 * g)), w0);
                if (split)
                    odd[r] = _mm512_dpbusd_epi32(odd[r], _mm512_set1_epi32(load4(mag[r] + 4 * g + 4)), w1);
                else
                    even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(load4(mag[r] + 4 * g + 4)), w1);
            }
        }
        if (g < e) {
            const __m512i w = _mm512_loadu_si512((const void *)(panel + 64 * g));
            for (int r = 0; r < count; ++r)
                even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(load4(mag[r] + 4 * g)), w);
        }
        /* fold_group's operations, 16 columns at a time */
        const __m512 ws = _mm512_loadu_ps(w_scale + PANEL * gi);
        for (int r = 0; r < count; ++r) {
            const __m512i sum = split ? _mm512_add_epi32(even[r], odd[r]) : even[r];
            total[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(_mm512_set1_ps(steps[r * ng + gi]), ws),
                                       total[r]);
        }
    }
    const int64_t width = N - n0 < PANEL ? N - n0 : PANEL;
    const __mmask16 cols = (__mmask16)((1u << width) - 1u);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(cols, bias + n0) : _mm512_setzero_ps();
    for (int r = 0; r < count; ++r) _mm512_mask_storeu_ps(out[r] + n0, cols, _mm512_add_ps(total[r], b));
#else
    float total[4][PANEL];
    memset(total, 0, sizeof total);
    for (int64_t gi = 0, s = 0; s < K4; ++gi, s += G4) {
        const int64_t e = s + G4 < K4 ? s + G4 : K4;
        int32_t acc[4][PANEL];
#if defined(__AVX2__)
        (void)col_sums;
        __m256i sum[4][2];
        for (int r = 0; r < count; ++r) sum[r][0] = sum[r][1] = _mm256_setzero_si256();
        const __m256i ones = _mm256_set1_epi16(1);
        for (int64_t g = s; g < e; ++g) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(panel + 64 * g));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(panel + 64 * g + 32));
            for (int r = 0; r < count; ++r) {
                const __m256i m = _mm256_set1_epi32(load4(mag[r] + 4 * g));
                const __m256i sg = _mm256_set1_epi32(load4(q[r] + 4 * g));
                sum[r][0] = _mm256_add_epi32(
                    sum[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(m, _mm256_sign_epi8(w0, sg)), ones));
                sum[r][1] = _mm256_add_epi32(
                    sum[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(m, _mm256_sign_epi8(w1, sg)), ones));
            }
        }
        for (int r = 0; r < count; ++r) {
            _mm256_storeu_si256((__m256i *)acc[r], sum[r][0]);
            _mm256_storeu_si256((__m256i *)(acc[r] + 8), sum[r][1]);
        }
#else
        (void)col_sums, (void)mag;
        for (int r = 0; r < count; ++r) {
            for (int c = 0; c < PANEL; ++c) acc[r][c] = 0;
            for (int64_t g = s; g < e; ++g)
                for (int c = 0; c < PANEL; ++c)
                    for (int j = 0; j < 4; ++j) acc[r][c] += (int32_t)q[r][4 * g + j] * panel[64 * g + 4 * c + j];
        }
#endif
        fold_group(count, (const int32_t (*)[PANEL])acc, steps + gi, ng, w_scale + PANEL * gi, total);
    }
    store_panel(count, (const float (*)[PANEL])total, bias, out, n0, N);
#endif
}

#include "int8_linear_amx.c"

/* x [M, K] float32, packed weight of N columns and Kp = K rounded up to 4, in groups of G inputs (a
 * multiple of 4 up to 256); w_scale float32 and col_sums int16 (each column's weight sum over the group,
 * the VNNI path's correction): [panels, groups, 16]; bias [N] or NULL; out [M, N] float32. Returns 0, or 1 when
 * scratch memory cannot be had. */
int int8_linear(float *out, const float *x, const int8_t *packed, const float *w_scale, const int16_t *col_sums,
                const float *bias, int64_t M, int64_t K, int64_t N, int64_t Kp, int64_t G, int threads) {
    const int64_t ng = (Kp + G - 1) / G;
    /* rows held: M, or M rounded up to whole tiles when AMX takes every token */
    int64_t held = M;
#ifdef HAVE_AMX
    const int all_amx = M >= AMX_MIN_TOKENS && Kp % 64 == 0 && G % 64 == 0 && amx_ready();
    if (all_amx) held = (M + AMX_ROWS - 1) / AMX_ROWS * AMX_ROWS;
#endif
    int8_t *q = malloc((size_t)(held * Kp) * 2);
    float *steps = malloc((size_t)(held * ng) * sizeof(float));  /* [held, groups] */
    if (!q || !steps) {
        free(q), free(steps);
        return 1;
    }
    uint8_t *mag = (uint8_t *)(q + held * Kp);
#pragma omp parallel for num_threads(threads) schedule(static) if (M > 8)
    for (int64_t m = 0; m < M; ++m) quantize_row(x + m * K, K, Kp, G, q + m * Kp, mag + m * Kp, steps + m * ng);

    int64_t first = 0;  /* tokens before it went through AMX */
#ifdef HAVE_AMX
    if (all_amx) {  /* the last tile's padding rows are zero tokens, their outputs never written */
        memset(q + M * Kp, 0, (size_t)((held - M) * Kp));
        for (int64_t i = M * ng; i < held * ng; ++i) steps[i] = 0.f;
        amx_rows(q, held, packed, Kp, G, steps, w_scale, bias, out, N, threads, M);
        first = M;
    }
#endif
    const int64_t panels = (N + PANEL - 1) / PANEL, K4 = Kp / 4, G4 = G / 4;
    const int64_t blocks = (M - first + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static) if (blocks > 0)
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t p = 0; p < panels; ++p) {
            const int8_t *panel = packed + p * PANEL * Kp;
            const float *ws = w_scale + p * ng * PANEL;
            const int16_t *cs = col_sums + p * ng * PANEL;
            const int64_t end = first + (b + 1) * ROW_BLOCK < M ? first + (b + 1) * ROW_BLOCK : M;
            for (int64_t m = first + b * ROW_BLOCK; m < end; m += 4) {
                const int8_t *qs[4];
                const uint8_t *ms[4];
                float *os[4];
                const int count = end - m < 4 ? (int)(end - m) : 4;
                for (int r = 0; r < count; ++r)
                    qs[r] = q + (m + r) * Kp, ms[r] = mag + (m + r) * Kp, os[r] = out + (m + r) * N;
                const float *st = steps + m * ng;
                /* constant counts, so each case compiles to its own fully unrolled kernel */
                switch (count) {
                    case 4: panel_rows(4, qs, ms, st, ng, panel, K4, G4, ws, cs, bias, os, p * PANEL, N); break;
                    case 3: panel_rows(3, qs, ms, st, ng, panel, K4, G4, ws, cs, bias, os, p * PANEL, N); break;
                    case 2: panel_rows(2, qs, ms, st, ng, panel, K4, G4, ws, cs, bias, os, p * PANEL, N); break;
                    default: panel_rows(1, qs, ms, st, ng, panel, K4, G4, ws, cs, bias, os, p * PANEL, N); break;
                }
            }
        }
    free(q), free(steps);
    return 0;
}
