/* Vector helpers shared by the kernels (abs_max portable, the rest AVX-512).
 *
 * exp16: exp of 16 floats at once, for softmax and SiLU: libm's expf is a call per element, and those
 * calls were a large share of a decode step's attention. Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2
 * (ln2 in two parts, so r is exact enough), a degree-6 polynomial for e^r, then scaled by 2^n. Within
 * 2 ulp of expf over the float range; NaN stays NaN, large inputs saturate to the largest finite value
 * and very negative ones go to zero.
 *
 * sum16: the lane sums of 16 vectors at once, 45 operations where 16 horizontal sums take ~8 each.
 * Each output is the same tree over its own vector's lanes whatever the other 15 hold, so padding a
 * block with zero vectors changes no sum.
 */
#ifndef MEDVLLM_VECTOR_MATH
#define MEDVLLM_VECTOR_MATH
#include <math.h>
#include <stdint.h>

/* max |x[k]| over n floats (0 for none): the scale of a per-token int8 quantization. */
static inline float abs_max(const float *x, int64_t n) {
    float top = 0.f;
#pragma omp simd reduction(max : top)
    for (int64_t k = 0; k < n; ++k) top = top > fabsf(x[k]) ? top : fabsf(x[k]);
    return top;
}
#ifdef __AVX512F__
#include <immintrin.h>

static inline __m512 exp16(__m512 x) {
    /* min/max return their second operand when one is NaN: x last keeps a NaN */
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(88.72f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* v[0..15] -> one vector whose lane j is the sum of v[j]'s 16 lanes */
static inline __m512 sum16(const __m512 *v) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; ++i)  /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i) {  /* per 128-bit lane: the lane's sums of v[4i .. 4i+3] */
        const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* then across the four 128-bit lanes */
    const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
    const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xdd));
}
#endif
#endif
