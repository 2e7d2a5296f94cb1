/* The GGUF matmul's inner kernels, on rows unpacked by gguf_blocks.c and activations from gguf_act.c.
 *
 * What every path computes, per (token, output row), 32 inputs b at a time in order:
 *   i1 = sum(u * q1) - offset * sum(q1)        exact int32 (Q6_K: sa * (half a) + sb * (half b))
 *   acc = fma((float)i1, ws * dx1, acc)
 *   acc = fma((float)i2, ws * dx2, acc)        parts = 2 (i2 likewise from q2)
 *   acc = fma(wm, sx, acc)                      types with a min
 * The integer sums are exact whatever the blocking, so each path (AVX-512 VNNI, AVX2, C) only has to
 * keep these float steps: the result is the same to the bit on every path, for any batch and threads.
 *
 * Two shapes of kernel:
 * - tokens in lanes (groups of 16 tokens): one 64-byte load holds 4 inputs of 16 tokens, one broadcast
 *   4 weight bytes; the block sums come out per lane, ready, and each weight byte meets 16 tokens.
 * - rows in lanes (the tokens after the last whole group, and one-token decode): 32 inputs of a row per
 *   register, eight rows' sums folded into one register by horizontal adds; gguf_rows.c, on the file's
 *   blocks directly.
 */
#include "gguf_act.c"
#include "gguf_blocks.c"

#define GGUF_ROWS 8 /* rows unpacked together */
#define GGUF_INLINE static inline __attribute__((always_inline))

static inline int32_t gguf_load4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline int gguf_log2(int v) { return v == 8 ? 3 : v == 16 ? 4 : v == 32 ? 5 : 7; }

#if defined(GGUF_VNNI)
/* 4 rows (u at stride K; ws.. at [b * GGUF_ROWS]) x one group of 16 tokens -> res[4][16] */
GGUF_INLINE void gguf_tokens4(const int qt, const int parts, const uint8_t *u, int64_t K, const float *ws,
                              const float *wm, const int32_t *sa, const int32_t *sb, const uint8_t *grp,
                              float res[][GGUF_GROUP]) {
    const int off = gguf_offset(qt), q6 = qt == GGUF_Q6_K;
    __m512 acc[4];
    for (int r = 0; r < 4; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < K / 32; ++b) {
        const uint8_t *rec = grp + b * GREC_BYTES, *ub = u + 32 * b;
        __m512i a1[4], h1[4], a2[4], h2[4];
        for (int r = 0; r < 4; ++r) a1[r] = h1[r] = a2[r] = h2[r] = _mm512_setzero_si512();
        for (int j = 0; j < 8; ++j) {
            const __m512i x1 = _mm512_loadu_si512(rec + 64 * j);
            const __m512i x2 = parts == 2 ? _mm512_loadu_si512(rec + GREC_Q2 + 64 * j) : x1;
            for (int r = 0; r < 4; ++r) {
                const __m512i w = _mm512_set1_epi32(gguf_load4(ub + r * K + 4 * j));
                if (q6 && j >= 4) {
                    h1[r] = _mm512_dpbusd_epi32(h1[r], w, x1);
                    if (parts == 2) h2[r] = _mm512_dpbusd_epi32(h2[r], w, x2);
                } else {
                    a1[r] = _mm512_dpbusd_epi32(a1[r], w, x1);
                    if (parts == 2) a2[r] = _mm512_dpbusd_epi32(a2[r], w, x2);
                }
            }
        }
        const __m512i s1a = _mm512_loadu_si512(rec + GREC_BS1A), s1b = _mm512_loadu_si512(rec + GREC_BS1B);
        const __m512i s2a = _mm512_loadu_si512(rec + GREC_BS2A), s2b = _mm512_loadu_si512(rec + GREC_BS2B);
        const __m512i c1 = _mm512_slli_epi32(_mm512_add_epi32(s1a, s1b), gguf_log2(off));
        const __m512i c2 = _mm512_slli_epi32(_mm512_add_epi32(s2a, s2b), gguf_log2(off));
        const __m512 dx1 = _mm512_loadu_ps(rec + GREC_DX1), dx2 = _mm512_loadu_ps(rec + GREC_DX2);
        const __m512 sx = _mm512_loadu_ps(rec + GREC_SX);
        for (int r = 0; r < 4; ++r) {
            const int64_t at = b * GGUF_ROWS + r;
            __m512i i1 = a1[r], i2 = a2[r];
            if (q6) {
                const __m512i ka = _mm512_set1_epi32(sa[at]), kb = _mm512_set1_epi32(sb[at]);
                i1 = _mm512_add_epi32(_mm512_mullo_epi32(ka, _mm512_sub_epi32(a1[r], _mm512_slli_epi32(s1a, 5))),
                                      _mm512_mullo_epi32(kb, _mm512_sub_epi32(h1[r], _mm512_slli_epi32(s1b, 5))));
                if (parts == 2)
                    i2 = _mm512_add_epi32(
                        _mm512_mullo_epi32(ka, _mm512_sub_epi32(a2[r], _mm512_slli_epi32(s2a, 5))),
                        _mm512_mullo_epi32(kb, _mm512_sub_epi32(h2[r], _mm512_slli_epi32(s2b, 5))));
            } else if (off) {
                i1 = _mm512_sub_epi32(i1, c1), i2 = _mm512_sub_epi32(i2, c2);
            }
            const __m512 step = _mm512_set1_ps(ws[at]);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(step, dx1), acc[r]);
            if (parts == 2) acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i2), _mm512_mul_ps(step, dx2), acc[r]);
            if (gguf_has_min(qt)) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wm[at]), sx, acc[r]);
        }
    }
    for (int r = 0; r < 4; ++r) _mm512_storeu_ps(res[r], acc[r]);
}

/* 32 inputs of one row against one token's: 8 int32 partial sums */
GGUF_INLINE __m256i gguf_dot32(const int qt, __m256i w, __m256i x, int32_t sa, int32_t sb) {
    if (qt == GGUF_Q6_K)  /* the halves' scales come in with the pair sums (int16 x int16 -> int32) */
        return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x),
                                 _mm256_set_m128i(_mm_set1_epi16((short)sb), _mm_set1_epi16((short)sa)));
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
}
#elif defined(GGUF_AVX2)
/* 2 rows x 8 tokens (half h of a group of 16) -> res[2][..] at tokens 8h.. */
GGUF_INLINE void gguf_tokens2(const int qt, const int parts, const int half, const uint8_t *u, int64_t K,
                              const float *ws, const float *wm, const int32_t *sa, const int32_t *sb,
                              const uint8_t *grp, float res[][GGUF_GROUP]) {
    const int off = gguf_offset(qt), q6 = qt == GGUF_Q6_K, q8 = qt == GGUF_Q8_0;
    /* int16 pair sums that can be added before overflowing: 2 products of 15, 31, 63 or 128 by 127 */
    const int j16 = (qt == GGUF_Q4_0 || qt == GGUF_Q4_1 || qt == GGUF_Q4_K) ? 8 : q8 ? 1 : q6 ? 2 : 4;
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t lane = 32 * half;
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < K / 32; ++b) {
        const uint8_t *rec = grp + b * GREC_BYTES, *ub = u + 32 * b;
        __m256i a1[2], h1[2], a2[2], h2[2], p1[2], p2[2];
        for (int r = 0; r < 2; ++r) a1[r] = h1[r] = a2[r] = h2[r] = p1[r] = p2[r] = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(rec + 64 * j + lane));
            const __m256i x2 = parts == 2 ? _mm256_loadu_si256((const __m256i *)(rec + GREC_Q2 + 64 * j + lane)) : x1;
            for (int r = 0; r < 2; ++r) {
                __m256i w = _mm256_set1_epi32(gguf_load4(ub + r * K + 4 * j)), y1 = x1, y2 = x2;
                if (q8) y1 = _mm256_sign_epi8(x1, w), y2 = _mm256_sign_epi8(x2, w), w = _mm256_abs_epi8(w);
                const __m256i m1 = _mm256_maddubs_epi16(w, y1);
                p1[r] = j % j16 ? _mm256_add_epi16(p1[r], m1) : m1;
                if (parts == 2) {
                    const __m256i m2 = _mm256_maddubs_epi16(w, y2);
                    p2[r] = j % j16 ? _mm256_add_epi16(p2[r], m2) : m2;
                }
                if ((j + 1) % j16 == 0) {
                    __m256i *t1 = q6 && j >= 4 ? h1 : a1, *t2 = q6 && j >= 4 ? h2 : a2;
                    t1[r] = _mm256_add_epi32(t1[r], _mm256_madd_epi16(p1[r], ones));
                    if (parts == 2) t2[r] = _mm256_add_epi32(t2[r], _mm256_madd_epi16(p2[r], ones));
                }
            }
        }
        const int64_t t = 4 * 8 * half;  /* byte offset of this half's tokens in the 16-token vectors */
        const __m256i s1a = _mm256_loadu_si256((const __m256i *)(rec + GREC_BS1A + t));
        const __m256i s1b = _mm256_loadu_si256((const __m256i *)(rec + GREC_BS1B + t));
        const __m256i s2a = _mm256_loadu_si256((const __m256i *)(rec + GREC_BS2A + t));
        const __m256i s2b = _mm256_loadu_si256((const __m256i *)(rec + GREC_BS2B + t));
        const __m256i c1 = _mm256_slli_epi32(_mm256_add_epi32(s1a, s1b), gguf_log2(off));
        const __m256i c2 = _mm256_slli_epi32(_mm256_add_epi32(s2a, s2b), gguf_log2(off));
        const __m256 dx1 = _mm256_loadu_ps((const float *)(rec + GREC_DX1 + t));
        const __m256 dx2 = _mm256_loadu_ps((const float *)(rec + GREC_DX2 + t));
        const __m256 sx = _mm256_loadu_ps((const float *)(rec + GREC_SX + t));
        for (int r = 0; r < 2; ++r) {
            const int64_t at = b * GGUF_ROWS + r;
            __m256i i1 = a1[r], i2 = a2[r];
            if (q6) {
                const __m256i ka = _mm256_set1_epi32(sa[at]), kb = _mm256_set1_epi32(sb[at]);
                i1 = _mm256_add_epi32(_mm256_mullo_epi32(ka, _mm256_sub_epi32(a1[r], _mm256_slli_epi32(s1a, 5))),
                                      _mm256_mullo_epi32(kb, _mm256_sub_epi32(h1[r], _mm256_slli_epi32(s1b, 5))));
                if (parts == 2)
                    i2 = _mm256_add_epi32(
                        _mm256_mullo_epi32(ka, _mm256_sub_epi32(a2[r], _mm256_slli_epi32(s2a, 5))),
                        _mm256_mullo_epi32(kb, _mm256_sub_epi32(h2[r], _mm256_slli_epi32(s2b, 5))));
            } else if (off) {
                i1 = _mm256_sub_epi32(i1, c1), i2 = _mm256_sub_epi32(i2, c2);
            }
            const __m256 step = _mm256_set1_ps(ws[at]);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(step, dx1), acc[r]);
            if (parts == 2) acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i2), _mm256_mul_ps(step, dx2), acc[r]);
            if (gguf_has_min(qt)) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wm[at]), sx, acc[r]);
        }
    }
    for (int r = 0; r < 2; ++r) _mm256_storeu_ps(res[r] + 8 * half, acc[r]);
}

GGUF_INLINE __m256i gguf_dot32(const int qt, __m256i w, __m256i x, int32_t sa, int32_t sb) {
    if (qt == GGUF_Q6_K)
        return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x),
                                 _mm256_set_m128i(_mm_set1_epi16((short)sb), _mm_set1_epi16((short)sa)));
    if (qt == GGUF_Q8_0) x = _mm256_sign_epi8(x, w), w = _mm256_abs_epi8(w);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}
#endif

#if defined(GGUF_VNNI) || defined(GGUF_AVX2)
/* eight rows' int32 partial sums -> one register of their totals (row r in lane r) */
GGUF_INLINE __m256i gguf_fold8(const __m256i *v) {
    const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i lo = _mm256_hadd_epi32(h01, h23), hi = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}
#endif

/* Token i of a group's record for 32 inputs, as a tail token's record (the portable path reads both). */
static void gguf_group_tok(const uint8_t *rec, int i, GgufTok *t) {
    for (int j = 0; j < 8; ++j) {
        memcpy(t->q1 + 4 * j, rec + 64 * j + 4 * i, 4);
        memcpy(t->q2 + 4 * j, rec + GREC_Q2 + 64 * j + 4 * i, 4);
    }
    memcpy(&t->dx1, rec + GREC_DX1 + 4 * i, 4);
    memcpy(&t->dx2, rec + GREC_DX2 + 4 * i, 4);
    memcpy(&t->sx, rec + GREC_SX + 4 * i, 4);
    memcpy(&t->bs1[0], rec + GREC_BS1A + 4 * i, 4);
    memcpy(&t->bs1[1], rec + GREC_BS1B + 4 * i, 4);
    memcpy(&t->bs2[0], rec + GREC_BS2A + 4 * i, 4);
    memcpy(&t->bs2[1], rec + GREC_BS2B + 4 * i, 4);
}

/* The portable path, and the definition the others keep: one (row, token) pair. The token's records come
 * from a group (grp, token i) or from the tail (tok). ws.. at [b * GGUF_ROWS]. */
static float gguf_dot_c(int qt, int parts, const uint8_t *u, int64_t K, const float *ws, const float *wm,
                        const int32_t *sa, const int32_t *sb, const uint8_t *grp, int i, const GgufTok *tok) {
    const int off = gguf_offset(qt);
    float acc = 0.f;
    for (int64_t b = 0; b < K / 32; ++b) {
        GgufTok g;
        const GgufTok *t = tok + b;
        if (grp) gguf_group_tok(grp + b * GREC_BYTES, i, &g), t = &g;
        const uint8_t *w = u + 32 * b;
        int32_t dot[2][2] = {{0, 0}, {0, 0}};  /* [part][half] */
        for (int l = 0; l < 32; ++l) {
            const int32_t v = qt == GGUF_Q8_0 && !off ? (int8_t)w[l] : w[l];
            dot[0][l >> 4] += v * t->q1[l], dot[1][l >> 4] += v * t->q2[l];
        }
        int32_t in[2];
        for (int p = 0; p < 2; ++p) {
            const int32_t *bs = p ? t->bs2 : t->bs1;
            in[p] = qt == GGUF_Q6_K ? sa[b * GGUF_ROWS] * (dot[p][0] - 32 * bs[0]) + sb[b * GGUF_ROWS] * (dot[p][1] - 32 * bs[1])
                                    : dot[p][0] + dot[p][1] - off * (bs[0] + bs[1]);
        }
        const float step = ws[b * GGUF_ROWS];
        acc = fmaf((float)in[0], step * t->dx1, acc);
        if (parts == 2) acc = fmaf((float)in[1], step * t->dx2, acc);
        if (gguf_has_min(qt)) acc = fmaf(wm[b * GGUF_ROWS], t->sx, acc);
    }
    return acc;
}
