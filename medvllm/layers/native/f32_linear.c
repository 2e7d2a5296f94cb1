/* Float32 linear for the fused decoder layer (decode_layer.c) on small batches: y = x W^T + b with W the
 * plain row-major [N, K] float32 weight, the layout PyTorch's own F.linear reads (one copy serves both).
 *
 * One stream's decode is a matrix-vector product bound by reading W; here 16 rows of W go at a time,
 * each dot product in 16 float32 lanes over K, the 16 then reduced together (sum16) and the inputs past
 * the last multiple of 16 added one by one. Every output takes those same steps whatever the batch:
 * a token's result does not depend on the other tokens. Without AVX-512, plain loops.
 *
 * Built at first use by medvllm/layers/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <stdint.h>
#include "vector_math.c"

#define F32_ROWS 16  /* rows of W per block */

/* x [M, K], w [N, K], bias [N] or NULL, out [M, N]. */
void f32_linear(float *out, const float *x, const float *w, const float *bias, int64_t M, int64_t K, int64_t N,
                int threads) {
    const int64_t blocks = (N + F32_ROWS - 1) / F32_ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t n0 = b * F32_ROWS, rows = N - n0 < F32_ROWS ? N - n0 : F32_ROWS;
        for (int64_t m = 0; m < M; ++m) {
            const float *xm = x + m * K;
            float dot[F32_ROWS];
            int64_t k = 0;
#ifdef __AVX512F__
            __m512 acc[F32_ROWS];
            for (int j = 0; j < F32_ROWS; ++j) acc[j] = _mm512_setzero_ps();
            for (; k + 16 <= K; k += 16) {
                const __m512 xv = _mm512_loadu_ps(xm + k);
                for (int j = 0; j < F32_ROWS; ++j)
                    if (j < rows) acc[j] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + (n0 + j) * K + k), acc[j]);
            }
            _mm512_storeu_ps(dot, sum16(acc));
#else
            for (int j = 0; j < F32_ROWS; ++j) dot[j] = 0.f;
#endif
            for (; k < K; ++k)
                for (int64_t j = 0; j < rows; ++j) dot[j] += xm[k] * w[(n0 + j) * K + k];
            for (int64_t j = 0; j < rows; ++j) out[m * N + n0 + j] = dot[j] + (bias ? bias[n0 + j] : 0.f);
        }
    }
}
