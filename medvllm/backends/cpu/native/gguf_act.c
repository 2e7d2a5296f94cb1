/* Activations for the GGUF kernels: each token's inputs quantized per block of 32, as int8 with a float
 * step d = amax / 127 (round half to even), the exact int sums of each 16 of them (the weights' offsets
 * come off with these), and sx, the sum of the quantized inputs (the types with a min multiply it). sx
 * must be the quantized sum, not the real one: a row is ws * u + wm with u >= 0, and only with both
 * terms on the same quantized inputs do the rounding errors meet the centred weight (ws * u + wm) rather
 * than ws * u alone (the real sum tripled one part's error on the default model's q/k/v). With parts = 2
 * a second int8 holds the residual x - q1 * d in steps of d / 254 (|q2| <= 127): ~15 bits in all, from
 * the same weight loads.
 *
 * The kernels multiply the two parts as one integer, 254 * q1 + q2 (|.| <= 32385), in steps of dx = d / 254:
 * their int32 sums fold into one before the float step. dx (d with one part) is what a record stores,
 * with the exact sums of that integer over each 16-input half, bsa and bsb (the weights' offsets come off
 * with them).
 *
 * Layout of the buffer (gguf_act_bytes): tokens in whole groups of 16 first, interleaved so that one
 * 64-byte load holds 4 inputs of each of the 16 tokens (the tokens-in-lanes kernels), then the tokens after
 * the last whole group, one record per 32 inputs each (the rows-in-lanes kernels). A group's record per
 * 32 inputs: q1 [8 x (16 tokens x 4)], q2 likewise, then 16 tokens' dx, sx (float), bsa, bsb (int32).
 */
#ifndef GGUF_ACT_C
#define GGUF_ACT_C
#include <math.h>
#include <stdint.h>
#include <string.h>

#define GGUF_GROUP 16 /* tokens per interleaved group */
#define GREC_Q2 512
#define GREC_DX 1024
#define GREC_SX (GREC_DX + 64)
#define GREC_BSA (GREC_DX + 128)
#define GREC_BSB (GREC_DX + 192)
#define GREC_BYTES (GREC_DX + 256)

/* one token's 32 inputs (tokens after the last whole group) */
typedef struct {
    int8_t q1[32], q2[32];
    float dx, sx;
    int32_t bs[2];  /* the halves' sums of 254 * q1 + q2 (q1 with one part) */
    int32_t pad[4];  /* 96 bytes: records stay 32-byte aligned */
} GgufTok;

int64_t gguf_act_bytes(int64_t M, int64_t K, int parts) {
    (void)parts;  /* one layout for both: the second part's room is left unused with parts = 1 */
    return (M / GGUF_GROUP) * (K / 32) * GREC_BYTES + (M % GGUF_GROUP) * (K / 32) * (int64_t)sizeof(GgufTok);
}

/* plain comparisons, not fminf/fmaxf: those are library calls here (NaN rules), 5x the quantization time */
static inline int8_t gguf_round8(float v) {
    v = v < -127.f ? -127.f : v > 127.f ? 127.f : v;
    return (int8_t)lrintf(v);  /* current rounding mode: half to even */
}

#ifdef __AVX2__
#include <immintrin.h>

/* four vectors of 8 int32 (each within -127..127) -> 32 int8 in order */
static inline __m256i gguf_pack8(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i v = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline int32_t gguf_hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

/* the same float operations as the scalar gguf_quant_block below, 8 inputs per register */
static void gguf_quant_block(const float *x, int parts, GgufTok *t) {
    __m256 v[4], a = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.f), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i), a = _mm256_max_ps(a, _mm256_andnot_ps(sign, v[i]));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    const float d = amax >= 1e-30f ? amax / 127.f : 0.f, id = d > 0.f ? 1.f / d : 0.f;
    const float d2 = d / 254.f, id2 = d2 > 0.f ? 1.f / d2 : 0.f;
    __m256i q[4], r[4];
    for (int i = 0; i < 4; ++i) {
        const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[i], _mm256_set1_ps(id)), lo), hi);
        q[i] = _mm256_cvtps_epi32(y);  /* current rounding mode: half to even, as lrintf */
        const __m256 res = _mm256_sub_ps(v[i], _mm256_mul_ps(_mm256_cvtepi32_ps(q[i]), _mm256_set1_ps(d)));
        r[i] = parts == 2 ? _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(res, _mm256_set1_ps(id2)), lo), hi))
                          : _mm256_setzero_si256();
    }
    _mm256_storeu_si256((__m256i *)t->q1, gguf_pack8(q[0], q[1], q[2], q[3]));
    _mm256_storeu_si256((__m256i *)t->q2, gguf_pack8(r[0], r[1], r[2], r[3]));
    const int k = parts == 2 ? 254 : 1;
    t->bs[0] = k * gguf_hsum8(_mm256_add_epi32(q[0], q[1])) + gguf_hsum8(_mm256_add_epi32(r[0], r[1]));
    t->bs[1] = k * gguf_hsum8(_mm256_add_epi32(q[2], q[3])) + gguf_hsum8(_mm256_add_epi32(r[2], r[3]));
    t->dx = parts == 2 ? d2 : d;
    t->sx = t->dx * (float)(t->bs[0] + t->bs[1]);
    memset(t->pad, 0, sizeof t->pad);
}
#else
/* 32 inputs -> one record */
static void gguf_quant_block(const float *x, int parts, GgufTok *t) {
    float amax = 0.f;
    for (int l = 0; l < 32; ++l) {
        const float a = fabsf(x[l]);
        amax = a > amax ? a : amax;
    }
    /* below ~1e-30 the inverse steps would overflow: such a block counts as zeros */
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
    const int k = parts == 2 ? 254 : 1;
    t->dx = parts == 2 ? d2 : d;
    t->bs[0] = k * s1[0] + s2[0], t->bs[1] = k * s1[1] + s2[1];
    t->sx = t->dx * (float)(t->bs[0] + t->bs[1]);
    memset(t->pad, 0, sizeof t->pad);
}
#endif

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
            gguf_put32(rec + GREC_DX + 4 * i, t.dx);
            gguf_put32(rec + GREC_SX + 4 * i, t.sx);
            memcpy(rec + GREC_BSA + 4 * i, &t.bs[0], 4);
            memcpy(rec + GREC_BSB + 4 * i, &t.bs[1], 4);
        }
    }
}
#endif /* GGUF_ACT_C */
