/* Float32 rows of a GGUF weight (the token-embedding lookup), bit-identical to gguf-py's
 * gguf.quants.dequantize: the same float32 operations in the same order, none fused (fp-contract off),
 * on the unpacked integers of gguf_blocks.c.
 */
#include <stdlib.h>

#include "gguf_blocks.c"

/* out [n_rows, K] = rows[i] of the weight (each row_bytes long); unknown types and K off the block
 * write nothing (the binding checks both first). */
__attribute__((optimize("fp-contract=off"))) void gguf_dequantize_rows(
        float *out, const uint8_t *w, int64_t row_bytes, const int64_t *rows, int64_t n_rows, int64_t K,
        int qtype, int threads) {
    const int bs = gguf_block_size(qtype);
    if (!bs || K % bs) return;
    const int64_t nb = K / 32;
#pragma omp parallel num_threads(threads) if (n_rows * K > 65536)
    {
        uint8_t *u = malloc((size_t)K + (size_t)nb * 8);
        float *ws = (float *)(u + K), *wm = ws + nb;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n_rows; ++i) {
            if (!u) continue;
            gguf_unpack_row(qtype, w + rows[i] * row_bytes, K, u, ws, wm, 1);
            float *o = out + i * K;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *q = u + 32 * b;
                float *ob = o + 32 * b;
                const float d = ws[b], m = wm[b];
                switch (qtype) {
                    case GGUF_Q4_0: for (int l = 0; l < 32; ++l) ob[l] = d * (float)(q[l] - 8); break;
                    case GGUF_Q5_0: for (int l = 0; l < 32; ++l) ob[l] = d * (float)(q[l] - 16); break;
                    case GGUF_Q4_1:
                    case GGUF_Q5_1: for (int l = 0; l < 32; ++l) ob[l] = d * (float)q[l] + m; break;
                    /* gguf: d*sc * q - dmin*m; wm holds -(dmin*m), and x + -y is x - y to the bit */
                    case GGUF_Q4_K:
                    case GGUF_Q5_K: for (int l = 0; l < 32; ++l) ob[l] = d * (float)q[l] + m; break;
                    case GGUF_Q8_0:
                        for (int l = 0; l < 32; ++l) ob[l] = (float)(int8_t)(q[l] ^ (GGUF_Q8_OFFSET ? 0x80 : 0)) * d;
                        break;
                    case GGUF_Q6_K: {  /* the halves' steps d * sc (gguf_blocks.c) */
                        const float da = d, db = m;
                        for (int l = 0; l < 16; ++l) ob[l] = da * (float)(q[l] - 32);
                        for (int l = 16; l < 32; ++l) ob[l] = db * (float)(q[l] - 32);
                        break;
                    }
                }
            }
        }
        free(u);
    }
}
