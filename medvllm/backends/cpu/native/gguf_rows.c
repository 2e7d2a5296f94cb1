/* Rows in lanes straight from the file's blocks: eight weight rows x one token, each 32-input block
 * unpacked in registers and multiplied at once (no scratch row), as llama.cpp's vec_dot kernels do. This
 * is one-token decode, where every weight byte is read once: the time is the memory's, so the work per
 * byte has to stay under it.
 *
 * The float steps are gguf_dot.c's (its header): the same bits as the portable path. With AVX-512 one
 * 512-bit register holds a block's weights twice, against both activation parts (q1 and q2 lie side by
 * side in GgufTok), so one load and one multiply serve both parts.
 */
#include "gguf_dot.c"

#if defined(GGUF_VNNI) || defined(GGUF_AVX2)
static inline int gguf_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* 8 float16 at p[r] + at -> 8 floats (rows in lanes) */
GGUF_INLINE __m256 gguf_halves8(const uint8_t *const *p, int64_t at) {
    __m128i h = _mm_setzero_si128();
    h = _mm_insert_epi16(h, gguf_u16(p[0] + at), 0);
    h = _mm_insert_epi16(h, gguf_u16(p[1] + at), 1);
    h = _mm_insert_epi16(h, gguf_u16(p[2] + at), 2);
    h = _mm_insert_epi16(h, gguf_u16(p[3] + at), 3);
    h = _mm_insert_epi16(h, gguf_u16(p[4] + at), 4);
    h = _mm_insert_epi16(h, gguf_u16(p[5] + at), 5);
    h = _mm_insert_epi16(h, gguf_u16(p[6] + at), 6);
    h = _mm_insert_epi16(h, gguf_u16(p[7] + at), 7);
    return _mm256_cvtph_ps(h);
}

/* block b's scales for 8 rows: ws, wm and (Q6_K) the int scales of its halves, as gguf_unpack_row_c */
typedef struct {
    __m256 ws, wm;
    __m256i ka, kb;
} GgufScales8;

GGUF_INLINE GgufScales8 gguf_scales8(const int qt, const uint8_t *const *p, int64_t b) {
    GgufScales8 s;
    s.wm = _mm256_setzero_ps(), s.ka = s.kb = _mm256_setzero_si256();
    const int ts = gguf_type_size(qt);
    if (qt == GGUF_Q4_K || qt == GGUF_Q5_K) {
        const int64_t at = b / 8 * ts;
        const int j = (int)(b % 8);
        int sc[8], m[8];
        for (int r = 0; r < 8; ++r) gguf_scale_min(p[r] + at + 4, j, sc + r, m + r);
        const __m256i vs = _mm256_setr_epi32(sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7]);
        const __m256i vm = _mm256_setr_epi32(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]);
        s.ws = _mm256_mul_ps(gguf_halves8(p, at), _mm256_cvtepi32_ps(vs));
        s.wm = _mm256_xor_ps(_mm256_mul_ps(gguf_halves8(p, at + 2), _mm256_cvtepi32_ps(vm)), _mm256_set1_ps(-0.f));
    } else if (qt == GGUF_Q6_K) {
        const int64_t at = b / 8 * 210;
        const int j = (int)(b % 8);
        int32_t a[8], c[8];
        for (int r = 0; r < 8; ++r) a[r] = (int8_t)p[r][at + 192 + 2 * j], c[r] = (int8_t)p[r][at + 193 + 2 * j];
        s.ws = gguf_halves8(p, at + 208);
        s.ka = _mm256_setr_epi32(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
        s.kb = _mm256_setr_epi32(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]);
    } else {
        s.ws = gguf_halves8(p, b * ts);
        if (gguf_has_min(qt)) s.wm = gguf_halves8(p, b * ts + 2);
    }
    return s;
}

/* block b of a row: its 32 unsigned weights as gguf_unpack_row stores them */
GGUF_INLINE __m256i gguf_wblock(const int qt, const uint8_t *row, int64_t b) {
    switch (qt) {
        case GGUF_Q4_0: return gguf_nibbles16(row + b * 18 + 2);
        case GGUF_Q4_1: return gguf_nibbles16(row + b * 20 + 4);
        case GGUF_Q5_0:
        case GGUF_Q5_1: {
            const uint8_t *p = row + b * (qt == GGUF_Q5_0 ? 22 : 24) + (qt == GGUF_Q5_0 ? 2 : 4);
            uint32_t qh;
            memcpy(&qh, p, 4);
            return _mm256_or_si256(gguf_nibbles16(p + 4), gguf_bits16(qh));
        }
        case GGUF_Q8_0: {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(row + b * 34 + 2));
            return GGUF_Q8_OFFSET ? _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)) : v;
        }
        case GGUF_Q4_K:
        case GGUF_Q5_K: {
            const int ts = qt == GGUF_Q4_K ? 144 : 176, j = (int)(b % 8);
            const uint8_t *p = row + b / 8 * ts, *qs = p + (qt == GGUF_Q4_K ? 16 : 48);
            __m256i v = gguf_shift_mask(_mm256_loadu_si256((const __m256i *)(qs + 32 * (j / 2))), -4 * (j & 1), 15);
            if (qt == GGUF_Q5_K)
                v = _mm256_or_si256(v, gguf_shift_mask(_mm256_loadu_si256((const __m256i *)(p + 16)), 4 - j, 16));
            return v;
        }
        default: {  /* Q6_K */
            const int j = (int)(b % 8), h = j / 4, k = j % 4;
            const uint8_t *p = row + b / 8 * 210;
            const __m256i lo = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32 * (k & 1)));
            const __m256i hi = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
            return _mm256_or_si256(gguf_shift_mask(lo, -4 * (k >> 1), 15), gguf_shift_mask(hi, 4 - 2 * k, 0x30));
        }
    }
}

/* the float steps for 8 rows of block b, from their exact int sums i1, i2 (rows in lanes) */
GGUF_INLINE __m256 gguf_steps8(const int qt, const int parts, __m256i i1, __m256i i2, const GgufScales8 *s,
                               const GgufTok *t, __m256 acc) {
    const int off = gguf_offset(qt);
    if (qt == GGUF_Q6_K) {
        i1 = _mm256_sub_epi32(i1, _mm256_slli_epi32(_mm256_add_epi32(_mm256_mullo_epi32(s->ka, _mm256_set1_epi32(t->bs1[0])),
                                                                     _mm256_mullo_epi32(s->kb, _mm256_set1_epi32(t->bs1[1]))), 5));
        if (parts == 2)
            i2 = _mm256_sub_epi32(i2, _mm256_slli_epi32(_mm256_add_epi32(_mm256_mullo_epi32(s->ka, _mm256_set1_epi32(t->bs2[0])),
                                                                         _mm256_mullo_epi32(s->kb, _mm256_set1_epi32(t->bs2[1]))), 5));
    } else if (off) {
        i1 = _mm256_sub_epi32(i1, _mm256_set1_epi32(off * (t->bs1[0] + t->bs1[1])));
        i2 = _mm256_sub_epi32(i2, _mm256_set1_epi32(off * (t->bs2[0] + t->bs2[1])));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(s->ws, _mm256_set1_ps(t->dx1)), acc);
    if (parts == 2) acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i2), _mm256_mul_ps(s->ws, _mm256_set1_ps(t->dx2)), acc);
    if (gguf_has_min(qt)) acc = _mm256_fmadd_ps(s->wm, _mm256_set1_ps(t->sx), acc);
    return acc;
}
#endif

#if defined(GGUF_VNNI)
/* block b of a row, its 32 weights in both 256-bit halves */
GGUF_INLINE __m512i gguf_wblock2(const int qt, const uint8_t *row, int64_t b) {
    if (qt == GGUF_Q4_0 || qt == GGUF_Q4_1 || qt == GGUF_Q5_0 || qt == GGUF_Q5_1) {
        const int ts = gguf_type_size(qt), head = ts - 16;
        const uint8_t *p = row + b * ts;
        /* 128-bit lanes: low nibbles, high, low, high */
        const __m512i q = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p + head)));
        __m512i v = _mm512_and_si512(_mm512_srlv_epi16(q, _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL,
                                                                            0, 0, 0x0004000400040004LL, 0x0004000400040004LL)),
                                     _mm512_set1_epi8(15));
        if (qt == GGUF_Q5_0 || qt == GGUF_Q5_1) {
            uint32_t qh;
            memcpy(&qh, p + head - 4, 4);
            v = _mm512_mask_add_epi8(v, _cvtu64_mask64(qh | (uint64_t)qh << 32), v, _mm512_set1_epi8(16));
        }
        return v;
    }
    if (qt == GGUF_Q8_0) {
        const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(row + b * 34 + 2)));
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    }
    const __m256i w = gguf_wblock(qt, row, b);
    return _mm512_inserti64x4(_mm512_castsi256_si512(w), w, 1);
}

/* 8 rows' 16 partial sums (part 1 in lanes 0-7, part 2 in 8-15) -> [part 1 of rows 0-7, part 2 of rows 0-7] */
GGUF_INLINE __m512i gguf_fold16(const __m512i *v) {
    __m512i t[4];
    for (int i = 0; i < 4; ++i)  /* per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] */
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    /* per 128-bit lane: rows 0-3 (or 4-7), each the sum of its 4 lanes there */
    const __m512i lo = _mm512_add_epi32(_mm512_unpacklo_epi64(t[0], t[1]), _mm512_unpackhi_epi64(t[0], t[1]));
    const __m512i hi = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2], t[3]), _mm512_unpackhi_epi64(t[2], t[3]));
    /* 128-bit lanes of lo / hi: part 1 (inputs' lanes 0-3), part 1 (4-7), part 2 (0-3), part 2 (4-7) */
    const __m512i s = _mm512_add_epi32(_mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15), s);
}

/* rows p[0..7] x one token's records -> res[8] */
GGUF_INLINE void gguf_rows8_fused(const int qt, const int parts, const uint8_t *const *p, int64_t K,
                                  const GgufTok *tok, float *res) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / 32; ++b) {
        const GgufTok *t = tok + b;
        const __m512i x = _mm512_loadu_si512(t->q1);  /* q1 then q2 */
        const GgufScales8 s = gguf_scales8(qt, p, b);
        __m512i v[8];
        for (int r = 0; r < 8; ++r) {
            const __m512i w = gguf_wblock2(qt, p[r], b);
            if (qt == GGUF_Q6_K) {  /* the halves' scales come in with the pair sums */
                const int8_t *sc = (const int8_t *)(p[r] + b / 8 * 210 + 192 + 2 * (b % 8));
                const __m512i k = _mm512_mask_blend_epi32(0xf0f0, _mm512_set1_epi16(sc[0]), _mm512_set1_epi16(sc[1]));
                v[r] = _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), k);
            } else {
                v[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
            }
        }
        const __m512i i = gguf_fold16(v);
        acc = gguf_steps8(qt, parts, _mm512_castsi512_si256(i), _mm512_extracti64x4_epi64(i, 1), &s, t, acc);
    }
    _mm256_storeu_ps(res, acc);
}
#elif defined(GGUF_AVX2)
GGUF_INLINE void gguf_rows8_fused(const int qt, const int parts, const uint8_t *const *p, int64_t K,
                                  const GgufTok *tok, float *res) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / 32; ++b) {
        const GgufTok *t = tok + b;
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)t->q1);
        const __m256i x2 = _mm256_loadu_si256((const __m256i *)t->q2);
        const GgufScales8 s = gguf_scales8(qt, p, b);
        __m256i v1[8], v2[8];
        for (int r = 0; r < 8; ++r) {
            const __m256i w = gguf_wblock(qt, p[r], b);
            int32_t ka = 0, kb = 0;
            if (qt == GGUF_Q6_K) {
                const int8_t *sc = (const int8_t *)(p[r] + b / 8 * 210 + 192 + 2 * (b % 8));
                ka = sc[0], kb = sc[1];
            }
            v1[r] = gguf_dot32(qt, w, x1, ka, kb);
            if (parts == 2) v2[r] = gguf_dot32(qt, w, x2, ka, kb);
        }
        acc = gguf_steps8(qt, parts, gguf_fold8(v1), parts == 2 ? gguf_fold8(v2) : _mm256_setzero_si256(), &s, t, acc);
    }
    _mm256_storeu_ps(res, acc);
}
#endif

#if defined(GGUF_VNNI) || defined(GGUF_AVX2)
#define GGUF_FUSED_ROWS 1
/* the chunk's rows (row r at w + r * row_bytes; rows past `rows` repeat row 0, computed, never stored) x
 * one token -> res */
static void gguf_chunk_token_fused(int qt, int parts, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t K,
                                   const GgufTok *tok, float *res) {
    const uint8_t *p[8];
    for (int r = 0; r < 8; ++r) p[r] = w + (r < rows ? r : 0) * row_bytes;
#define GGUF_BOTH(Q)                                                                     \
    if (parts == 2) gguf_rows8_fused(Q, 2, p, K, tok, res);                              \
    else gguf_rows8_fused(Q, 1, p, K, tok, res);                                         \
    return
    switch (qt) {
        case GGUF_Q4_0: GGUF_BOTH(GGUF_Q4_0);
        case GGUF_Q4_1: GGUF_BOTH(GGUF_Q4_1);
        case GGUF_Q5_0: GGUF_BOTH(GGUF_Q5_0);
        case GGUF_Q5_1: GGUF_BOTH(GGUF_Q5_1);
        case GGUF_Q8_0: GGUF_BOTH(GGUF_Q8_0);
        case GGUF_Q4_K: GGUF_BOTH(GGUF_Q4_K);
        case GGUF_Q5_K: GGUF_BOTH(GGUF_Q5_K);
        case GGUF_Q6_K: GGUF_BOTH(GGUF_Q6_K);
    }
#undef GGUF_BOTH
}
#endif
