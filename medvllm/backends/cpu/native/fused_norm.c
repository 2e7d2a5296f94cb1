/* Float32 RMSNorm fused with the residual add: one pass over memory in place of eight PyTorch ops
 * (each a dispatch, an allocation and a pass of its own), twice per decoder layer.
 *
 * Per token, the same arithmetic as the PyTorch path in layers/norm.py (float32 statistics, then
 * weight * normalized), summed in another order: results agree to float32 rounding.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include <math.h>
#include <stdint.h>

/* residual == NULL: out = norm(x). Else sum = x + residual is written to residual_out and
 * out = norm(sum). Rows of D floats, T rows. */
void rms_norm(float *out, float *residual_out, const float *x, const float *residual, const float *weight,
              float eps, int64_t T, int64_t D, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (T * D > 65536)
    for (int64_t t = 0; t < T; ++t) {
        const float *xr = x + t * D;
        float *o = out + t * D;
        const float *src = xr;
        if (residual) {
            float *s = residual_out + t * D;
            const float *r = residual + t * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) s[d] = xr[d] + r[d];
            src = s;
        }
        float sq = 0.f;
#pragma omp simd reduction(+ : sq)
        for (int64_t d = 0; d < D; ++d) sq += src[d] * src[d];
        const float inv = 1.f / sqrtf(sq / (float)D + eps);
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = weight[d] * (src[d] * inv);
    }
}
