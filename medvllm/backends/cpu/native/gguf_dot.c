/* The GGUF matmul's inner kernels, on rows unpacked by gguf_blocks.c and activations from gguf_act.c.
 *
 * What every path computes, per (token, output row), 32 inputs b at a time in order, with the token's two
 * parts as one integer a = 254 * q1 + q2 (q1 alone with one part; gguf_act.c):
 *   i = sum(u * a) - offset * sum(a)           exact int32 (|i| < 2^28)
 *   acc = fma((float)i, ws * dx, acc)
 *   acc = fma(wm, sx, acc)                      types with a min
 * Q6_K has a step per 16-input half (i would overflow int32 with its int scales in it), so two steps:
 *   acc = fma((float)i_a, ws * dx, acc), acc = fma((float)i_b, wm * dx, acc)
 * The integer sums are exact whatever the blocking, so each path (AVX-512 VNNI, AVX2, C) only has to
 * keep these float steps: the result is the same to the bit on every path, for any batch and threads.
 * One float step per block (not one per part) is what keeps the epilogue small next to the multiplies.
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

/* the parts' int32 sums as one: 254 * i1 + i2. With one part the VNNI kernel keeps the odd steps' sums in
 * i2 (two chains of dependent vpdpbusd instead of one: with one chain per row the four rows' chains waited
 * on the instruction's latency, and one part ran no faster than two), so the sum is i1 + i2; integer sums,
 * the same bits either way. */
#if defined(GGUF_VNNI)
GGUF_INLINE __m512i gguf_join16(const int parts, __m512i i1, __m512i i2) {
    return parts == 2 ? _mm512_add_epi32(_mm512_mullo_epi32(i1, _mm512_set1_epi32(254)), i2) : _mm512_add_epi32(i1, i2);
}

/* 4 rows (u at stride K; ws, wm at [b * GGUF_ROWS]) x one group of 16 tokens -> res[4][16] */
GGUF_INLINE void gguf_tokens4(const int qt, const int parts, const uint8_t *u, int64_t K, const float *ws,
                              const float *wm, const uint8_t *grp, float res[][GGUF_GROUP]) {
    const int off = gguf_offset(qt), q6 = qt == GGUF_Q6_K;
    __m512 acc[4];
    for (int r = 0; r < 4; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < K / 32; ++b) {
        const uint8_t *rec = grp + b * GREC_BYTES, *ub = u + 32 * b;
        /* the offsets' part is where the sums start (the last sum the parts' join adds as is): no
         * subtraction per row */
        const __m512i bsa = _mm512_loadu_si512(rec + GREC_BSA), bsb = _mm512_loadu_si512(rec + GREC_BSB);
        const __m512i z = _mm512_setzero_si512();
        const __m512i ca = q6    ? _mm512_sub_epi32(z, _mm512_slli_epi32(bsa, 5))
                           : off ? _mm512_sub_epi32(z, _mm512_slli_epi32(_mm512_add_epi32(bsa, bsb), gguf_log2(off)))
                                 : z;
        const __m512i cb = q6 ? _mm512_sub_epi32(z, _mm512_slli_epi32(bsb, 5)) : z;
        __m512i a1[4], h1[4], a2[4], h2[4];
        for (int r = 0; r < 4; ++r) {
            a1[r] = parts == 2 ? z : ca, a2[r] = parts == 2 ? ca : z;
            h1[r] = parts == 2 ? z : cb, h2[r] = parts == 2 ? cb : z;
        }
        for (int j = 0; j < 8; ++j) {
            const __m512i x1 = _mm512_loadu_si512(rec + 64 * j);
            const __m512i x2 = parts == 2 ? _mm512_loadu_si512(rec + GREC_Q2 + 64 * j) : x1;
            for (int r = 0; r < 4; ++r) {
                const __m512i w = _mm512_set1_epi32(gguf_load4(ub + r * K + 4 * j));
                __m512i *s1 = q6 && j >= 4 ? h1 : a1, *s2 = q6 && j >= 4 ? h2 : a2;
                if (parts == 2) {
                    s1[r] = _mm512_dpbusd_epi32(s1[r], w, x1);
                    s2[r] = _mm512_dpbusd_epi32(s2[r], w, x2);
                } else if (j & 1) {  /* one part: odd steps on the second chain */
                    s2[r] = _mm512_dpbusd_epi32(s2[r], w, x1);
                } else {
                    s1[r] = _mm512_dpbusd_epi32(s1[r], w, x1);
                }
            }
        }
        const __m512 dx = _mm512_loadu_ps(rec + GREC_DX);
        const __m512 sx = gguf_has_min(qt) ? _mm512_loadu_ps(rec + GREC_SX) : _mm512_setzero_ps();
        for (int r = 0; r < 4; ++r) {
            const int64_t at = b * GGUF_ROWS + r;
            const __m512i i = gguf_join16(parts, a1[r], a2[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(_mm512_set1_ps(ws[at]), dx), acc[r]);
            if (q6) {
                const __m512i ib = gguf_join16(parts, h1[r], h2[r]);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ib), _mm512_mul_ps(_mm512_set1_ps(wm[at]), dx), acc[r]);
            }
            if (gguf_has_min(qt)) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wm[at]), sx, acc[r]);
        }
    }
    for (int r = 0; r < 4; ++r) _mm512_storeu_ps(res[r], acc[r]);
}
#elif defined(GGUF_AVX2)
GGUF_INLINE __m256i gguf_join8(const int parts, __m256i i1, __m256i i2) {
    return parts == 2 ? _mm256_add_epi32(_mm256_mullo_epi32(i1, _mm256_set1_epi32(254)), i2) : i1;
}

/* 2 rows x 8 tokens (half h of a group of 16) -> res[2][..] at tokens 8h.. */
GGUF_INLINE void gguf_tokens2(const int qt, const int parts, const int half, const uint8_t *u, int64_t K,
                              const float *ws, const float *wm, const uint8_t *grp, float res[][GGUF_GROUP]) {
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
        const __m256i bsa = _mm256_loadu_si256((const __m256i *)(rec + GREC_BSA + t));
        const __m256i bsb = _mm256_loadu_si256((const __m256i *)(rec + GREC_BSB + t));
        const __m256i ca = q6 ? _mm256_slli_epi32(bsa, 5) : _mm256_slli_epi32(_mm256_add_epi32(bsa, bsb), gguf_log2(off));
        const __m256i cb = _mm256_slli_epi32(bsb, 5);
        const __m256 dx = _mm256_loadu_ps((const float *)(rec + GREC_DX + t));
        const __m256 sx = _mm256_loadu_ps((const float *)(rec + GREC_SX + t));
        for (int r = 0; r < 2; ++r) {
            const int64_t at = b * GGUF_ROWS + r;
            __m256i i = gguf_join8(parts, a1[r], a2[r]);
            if (off) i = _mm256_sub_epi32(i, ca);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(_mm256_set1_ps(ws[at]), dx), acc[r]);
            if (q6) {
                const __m256i ib = _mm256_sub_epi32(gguf_join8(parts, h1[r], h2[r]), cb);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ib), _mm256_mul_ps(_mm256_set1_ps(wm[at]), dx), acc[r]);
            }
            if (gguf_has_min(qt)) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wm[at]), sx, acc[r]);
        }
    }
    for (int r = 0; r < 2; ++r) _mm256_storeu_ps(res[r] + 8 * half, acc[r]);
}

/* 32 inputs of one row against one token's: 8 int32 partial sums (lanes 0-3: the first 16 inputs) */
GGUF_INLINE __m256i gguf_dot32(const int qt, __m256i w, __m256i x) {
    if (qt == GGUF_Q8_0) x = _mm256_sign_epi8(x, w), w = _mm256_abs_epi8(w);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}
#endif

#if defined(GGUF_VNNI) || defined(GGUF_AVX2)
/* eight rows' int32 partial sums -> the totals of their 16-input halves, a (lanes 0-3 of each) and b
 * (lanes 4-7), row r in lane r */
GGUF_INLINE void gguf_fold8h(const __m256i *v, __m256i *a, __m256i *b) {
    const __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i lo = _mm256_hadd_epi32(h01, h23), hi = _mm256_hadd_epi32(h45, h67);
    *a = _mm256_permute2x128_si256(lo, hi, 0x20), *b = _mm256_permute2x128_si256(lo, hi, 0x31);
}

/* eight rows' int32 partial sums -> one register of their totals (row r in lane r) */
GGUF_INLINE __m256i gguf_fold8(const __m256i *v) {
    __m256i a, b;
    gguf_fold8h(v, &a, &b);
    return _mm256_add_epi32(a, b);
}
#endif

/* Token i of a group's record for 32 inputs, as a tail token's record (the portable path reads both). */
static void gguf_group_tok(const uint8_t *rec, int i, GgufTok *t) {
    for (int j = 0; j < 8; ++j) {
        memcpy(t->q1 + 4 * j, rec + 64 * j + 4 * i, 4);
        memcpy(t->q2 + 4 * j, rec + GREC_Q2 + 64 * j + 4 * i, 4);
    }
    memcpy(&t->dx, rec + GREC_DX + 4 * i, 4);
    memcpy(&t->sx, rec + GREC_SX + 4 * i, 4);
    memcpy(&t->bs[0], rec + GREC_BSA + 4 * i, 4);
    memcpy(&t->bs[1], rec + GREC_BSB + 4 * i, 4);
}

/* The portable path, and the definition the others keep: one (row, token) pair. The token's records come
 * from a group (grp, token i) or from the tail (tok). ws, wm at [b * GGUF_ROWS]. */
static float gguf_dot_c(int qt, int parts, const uint8_t *u, int64_t K, const float *ws, const float *wm,
                        const uint8_t *grp, int i, const GgufTok *tok) {
    const int off = gguf_offset(qt);
    float acc = 0.f;
    for (int64_t b = 0; b < K / 32; ++b) {
        GgufTok g;
        const GgufTok *t = tok + b;
        if (grp) gguf_group_tok(grp + b * GREC_BYTES, i, &g), t = &g;
        const uint8_t *w = u + 32 * b;
        int32_t in[2] = {0, 0};  /* per 16-input half: sum(u * a) - offset * sum(a) */
        for (int l = 0; l < 32; ++l) {
            const int32_t v = qt == GGUF_Q8_0 && !off ? (int8_t)w[l] : w[l];
            in[l >> 4] += v * ((parts == 2 ? 254 : 1) * t->q1[l] + (parts == 2 ? t->q2[l] : 0));
        }
        in[0] -= off * t->bs[0], in[1] -= off * t->bs[1];
        const float step = ws[b * GGUF_ROWS];
        if (qt == GGUF_Q6_K) {
            acc = fmaf((float)in[0], step * t->dx, acc);
            acc = fmaf((float)in[1], wm[b * GGUF_ROWS] * t->dx, acc);
        } else {
            acc = fmaf((float)(in[0] + in[1]), step * t->dx, acc);
        }
        if (gguf_has_min(qt)) acc = fmaf(wm[b * GGUF_ROWS], t->sx, acc);
    }
    return acc;
}
