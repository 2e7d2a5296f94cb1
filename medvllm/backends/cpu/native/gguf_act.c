/* Activations for the GGUF kernels: each token's inputs quantized per block of 32, as int8 with a float
 * step d = amax / 127 (round half to even), the exact int sums of each 16 of them (the weights' offsets
 * come off with these), and the float32 sum of the real inputs (the types with a min multiply it: more
 * faithful than the sum of the quantized ones). With parts = 2 a second int8 holds the residual
 * x - q1 * d in steps of d / 254 (|q2| <= 127): ~15 bits in all, from the same weight loads.
 *
 * Layout of the buffer (gguf_act_bytes): tokens in whole groups of 16 first, interleaved so that one
 * 64-byte load holds 4 inputs of each of the 16 tokens (the tokens-in-lanes kernels), then the tokens after
 * the last whole group, one record per 32 inputs each (the rows-in-lanes kernels). A group's record per
 * 32 inputs: q1 [8 x (16 tokens x 4)], q2 likewise, then 16 tokens' dx1, dx2, sx (float), bs1a, bs1b,
 * bs2a, bs2b (int32 sums of each part's two 16-input halves).
 */
#ifndef GGUF_ACT_C
#define GGUF_ACT_C
#include <math.h>
#include <stdint.h>
#include <string.h>

#define GGUF_GROUP 16 /* tokens per interleaved group */
#define GREC_Q2 512
#define GREC_DX1 1024
#define GREC_DX2 (GREC_DX1 + 64)
#define GREC_SX (GREC_DX1 + 128)
#define GREC_BS1A (GREC_DX1 + 192)
#define GREC_BS1B (GREC_DX1 + 256)
#define GREC_BS2A (GREC_DX1 + 320)
#define GREC_BS2B (GREC_DX1 + 384)
#define GREC_BYTES (GREC_DX1 + 448)

/* one token's 32 inputs (tokens after the last whole group) */
typedef struct {
    int8_t q1[32], q2[32];
    float dx1, dx2, sx;
    int32_t bs1[2], bs2[2];
    int32_t pad;  /* 96 bytes: records stay 32-byte aligned */
} GgufTok;

int64_t gguf_act_bytes(int64_t M, int64_t K, int parts) {
    (void)parts;  /* one layout for both: the second part's room is left unused with parts = 1 */
    return (M / GGUF_GROUP) * (K / 32) * GREC_BYTES + (M % GGUF_GROUP) * (K / 32) * (int64_t)sizeof(GgufTok);
}

static inline int8_t gguf_round8(float v) {
    const long q = lrintf(fminf(fmaxf(v, -127.f), 127.f));  /* current rounding mode: half to even */
    return (int8_t)q;
}

/* 32 inputs -> one record. The float sum has a fixed order (8 lanes, then halves) on every build. */
static void gguf_quant_block(const float *x, int parts, GgufTok *t) {
    float amax = 0.f;
    for (int l = 0; l < 32; ++l) amax = fmaxf(amax, fabsf(x[l]));
    float lane[8];
    for (int l = 0; l < 8; ++l) lane[l] = (x[l] + x[l + 8]) + (x[l + 16] + x[l + 24]);
    for (int l = 0; l < 4; ++l) lane[l] = lane[l] + lane[l + 4];
    t->sx = (lane[0] + lane[2]) + (lane[1] + lane[3]);
    /* below ~1e-30 the inverse steps would overflow: such a block counts as zeros (its sum stays) */
    const float d = amax >= 1e-30f ? amax / 127.f : 0.f, id = d > 0.f ? 1.f / d : 0.f;
    const float d2 = d / 254.f, id2 = d2 > 0.f ? 1.f / d2 : 0.f;
    int32_t s1[2] = {0, 0}, s2[2] = {0, 0};
    for (int l = 0; l < 32; ++l) {
        const int8_t q = gguf_round8(x[l] * id);
        t->q1[l] = q, s1[l >> 4] += q;
        if (parts == 2) {
            const int8_t r = gguf_round8((x[l] - (float)q * d) * id2);
            t->q2[l] = r, s2[l >> 4] += r;
        } else {
            t->q2[l] = 0;
        }
    }
    t->dx1 = d, t->dx2 = parts == 2 ? d2 : 0.f;
    t->bs1[0] = s1[0], t->bs1[1] = s1[1], t->bs2[0] = s2[0], t->bs2[1] = s2[1];
    t->pad = 0;
}

static inline void gguf_put32(uint8_t *p, float v) { memcpy(p, &v, 4); }

void gguf_quantize_act(void *qx, const float *x, int64_t M, int64_t K, int parts, int threads) {
    const int64_t nb = K / 32, grouped = M / GGUF_GROUP * GGUF_GROUP;
    uint8_t *base = qx;
    GgufTok *tail = (GgufTok *)(base + grouped / GGUF_GROUP * nb * GREC_BYTES);
#pragma omp parallel for num_threads(threads) schedule(static) if (M * K > 65536)
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t b = 0; b < nb; ++b) {
            if (m >= grouped) {
                gguf_quant_block(x + m * K + 32 * b, parts, tail + (m - grouped) * nb + b);
                continue;
            }
            GgufTok t;
            gguf_quant_block(x + m * K + 32 * b, parts, &t);
            uint8_t *rec = base + ((m / GGUF_GROUP) * nb + b) * GREC_BYTES;
            const int i = (int)(m % GGUF_GROUP);
            for (int j = 0; j < 8; ++j) {
                memcpy(rec + 64 * j + 4 * i, t.q1 + 4 * j, 4);
                memcpy(rec + GREC_Q2 + 64 * j + 4 * i, t.q2 + 4 * j, 4);
            }
            gguf_put32(rec + GREC_DX1 + 4 * i, t.dx1);
            gguf_put32(rec + GREC_DX2 + 4 * i, t.dx2);
            gguf_put32(rec + GREC_SX + 4 * i, t.sx);
            memcpy(rec + GREC_BS1A + 4 * i, &t.bs1[0], 4);
            memcpy(rec + GREC_BS1B + 4 * i, &t.bs1[1], 4);
            memcpy(rec + GREC_BS2A + 4 * i, &t.bs2[0], 4);
            memcpy(rec + GREC_BS2B + 4 * i, &t.bs2[1], 4);
        }
    }
}
#endif /* GGUF_ACT_C */
