/* The index of each row's largest value, the first on ties: the greedy token of each row of logits.
 *
 * torch.max(dim=-1) over a batch's rows of logits (argmax is slower still) is a noticeable share of a
 * decode step; the row is in L2 after the head wrote it, and two vector passes over it (the largest
 * value, then where it first is) take a fraction of that. A row holding NaN gives its first NaN, as
 * torch.max does.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static int64_t row_first_max(const float *x, int64_t n) {
    /* pass 1: the largest value, NaN once any value is NaN */
    float top = -INFINITY;
    int64_t i = 0;
#ifdef __AVX512F__
    __m512 best = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        best = _mm512_max_ps(best, v);
    }
    top = nan ? NAN : _mm512_reduce_max_ps(best);
#endif
    for (; i < n; ++i) top = isnan(x[i]) || x[i] > top ? x[i] : top;  /* a NaN top stays NaN */
    /* pass 2: where it first is */
    int64_t k = 0;
    if (isnan(top)) {
        while (!isnan(x[k])) ++k;
        return k;
    }
#ifdef __AVX512F__
    const __m512 t = _mm512_set1_ps(top);
    for (; k + 16 <= n; k += 16) {
        const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + k), t, _CMP_EQ_OQ);
        if (hit) return k + __builtin_ctz(hit);
    }
#endif
    for (; k < n; ++k)
        if (x[k] == top) return k;
    return 0;  /* no values */
}

/* x [rows, n] float32 -> out [rows] int64. */
void first_max(int64_t *out, const float *x, int64_t rows, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) out[r] = row_first_max(x + r * n, n);
}
