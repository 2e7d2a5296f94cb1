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

/* block b's scales for 8 rows: ws, wm as gguf_unpack_row_c makes them (Q6_K: the halves' steps) */
typedef struct {
    __m256 ws, wm;
} GgufScales8;

/* block b's scales for the types with one block per 32 inputs */
GGUF_INLINE GgufScales8 gguf_scales8(const int qt, const uint8_t *const *p, int64_t b) {
    GgufScales8 s;
    const int ts = gguf_type_size(qt);
    s.ws = gguf_halves8(p, b * ts);
    s.wm = gguf_has_min(qt) ? gguf_halves8(p, b * ts + 2) : _mm256_setzero_ps();
    return s;
}

/* 4 bytes at p[r] + at for 8 rows -> one int32 per row */
GGUF_INLINE __m256i gguf_words8(const uint8_t *const *p, int64_t at) {
    int32_t v[8];
    for (int r = 0; r < 8; ++r) memcpy(v + r, p[r] + at, 4);
    return _mm256_loadu_si256((const __m256i *)v);
}

/* byte i (0-3) of each lane: unsigned (mask 255) or, with sign, as int8 */
GGUF_INLINE __m256i gguf_byte8(__m256i v, int i, int sign) {
    return sign ? _mm256_srai_epi32(_mm256_slli_epi32(v, 24 - 8 * i), 24)
                : _mm256_and_si256(_mm256_srli_epi32(v, 8 * i), _mm256_set1_epi32(255));
}

/* super-block s's scales for its 8 blocks, 8 rows each, once per 256 inputs: the 6-bit scales and mins
 * (gguf_scale_min) or Q6_K's int8 scales times d, decoded with the rows in lanes */
GGUF_INLINE void gguf_kscales8(const int qt, const uint8_t *const *p, int64_t s, GgufScales8 *out) {
    const int64_t at = s * gguf_type_size(qt);
    if (qt == GGUF_Q6_K) {
        const __m256 d = gguf_halves8(p, at + 208);
        for (int q = 0; q < 4; ++q) {
            const __m256i v = gguf_words8(p, at + 192 + 4 * q);  /* scales 4q .. 4q + 3: blocks 2q, 2q + 1 */
            for (int h = 0; h < 2; ++h) {
                GgufScales8 *o = out + 2 * q + h;
                o->ws = _mm256_mul_ps(d, _mm256_cvtepi32_ps(gguf_byte8(v, 2 * h, 1)));
                o->wm = _mm256_mul_ps(d, _mm256_cvtepi32_ps(gguf_byte8(v, 2 * h + 1, 1)));
            }
        }
        return;
    }
    const __m256 d = gguf_halves8(p, at), dmin = gguf_halves8(p, at + 2);
    const __m256i q0 = gguf_words8(p, at + 4), q1 = gguf_words8(p, at + 8), q2 = gguf_words8(p, at + 12);
    const __m256i m63 = _mm256_set1_epi32(63), m15 = _mm256_set1_epi32(15), m3 = _mm256_set1_epi32(3);
    for (int j = 0; j < 8; ++j) {
        __m256i sc, m;
        if (j < 4) {
            sc = _mm256_and_si256(gguf_byte8(q0, j, 0), m63), m = _mm256_and_si256(gguf_byte8(q1, j, 0), m63);
        } else {  /* low 4 bits from byte j + 4, high 2 from the top of bytes j - 4 and j */
            const __m256i lo = gguf_byte8(q2, j - 4, 0);
            sc = _mm256_or_si256(_mm256_and_si256(lo, m15),
                                 _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(gguf_byte8(q0, j - 4, 0), 6), m3), 4));
            m = _mm256_or_si256(_mm256_srli_epi32(lo, 4),
                                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(gguf_byte8(q1, j - 4, 0), 6), m3), 4));
        }
        out[j].ws = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc));
        out[j].wm = _mm256_xor_ps(_mm256_mul_ps(dmin, _mm256_cvtepi32_ps(m)), _mm256_set1_ps(-0.f));
    }
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

/* the float steps for 8 rows of block b, from the exact int sums of each part's 16-input halves (rows in
 * lanes; the types with one step per block may pass each part's total as its first half, zeros as the
 * second) */
GGUF_INLINE __m256 gguf_steps8(const int qt, const int parts, __m256i i1a, __m256i i1b, __m256i i2a, __m256i i2b,
                               const GgufScales8 *s, const GgufTok *t, __m256 acc) {
    const int off = gguf_offset(qt);
    const __m256i k = _mm256_set1_epi32(254);
    __m256i ia = parts == 2 ? _mm256_add_epi32(_mm256_mullo_epi32(i1a, k), i2a) : i1a;
    const __m256 dx = _mm256_set1_ps(t->dx);
    if (qt == GGUF_Q6_K) {
        __m256i ib = parts == 2 ? _mm256_add_epi32(_mm256_mullo_epi32(i1b, k), i2b) : i1b;
        ia = _mm256_sub_epi32(ia, _mm256_set1_epi32(32 * t->bs[0]));
        ib = _mm256_sub_epi32(ib, _mm256_set1_epi32(32 * t->bs[1]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_mul_ps(s->ws, dx), acc);
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(ib), _mm256_mul_ps(s->wm, dx), acc);
    }
    if (off) ia = _mm256_sub_epi32(ia, _mm256_set1_epi32(off * (t->bs[0] + t->bs[1])));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_mul_ps(s->ws, dx), acc);
    if (gguf_has_min(qt)) acc = _mm256_fmadd_ps(s->wm, _mm256_set1_ps(t->sx), acc);
    return acc;
}
#endif

#if defined(GGUF_VNNI) || defined(GGUF_AVX2)
/* Ask for the next chunk's bytes a block's worth (8 blocks of 8 rows) per block of this one: the fill
 * spreads over the chunk's compute, where asking for the whole chunk at once overflowed the miss queue. */
GGUF_INLINE void gguf_prefetch_next(const int qt, const uint8_t *pf, int64_t b) {
    if (!pf) return;
    const int bytes = 8 * gguf_type_size(qt) * 32 / gguf_block_size(qt);
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)(pf + b * bytes + o), _MM_HINT_T0);
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
    if (qt == GGUF_Q4_K) {
        const int j = (int)(b % 8);
        const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(row + b / 8 * 144 + 16 + 32 * (j / 2))));
        return _mm512_and_si512(_mm512_srli_epi16(q, 4 * (j & 1)), _mm512_set1_epi8(15));
    }
    const __m256i w = gguf_wblock(qt, row, b);
    return _mm512_inserti64x4(_mm512_castsi256_si512(w), w, 1);
}

/* 8 rows' 16 partial sums (part 1 in lanes 0-7, part 2 in 8-15) -> the totals of the 16-input halves:
 * a = [part 1 of rows 0-7, part 2 of rows 0-7] over inputs 0-15, b the same over 16-31 */
GGUF_INLINE void gguf_fold16h(const __m512i *v, __m512i *a, __m512i *b) {
    __m512i t[4];
    for (int i = 0; i < 4; ++i)  /* per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] */
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    /* per 128-bit lane: rows 0-3 (or 4-7), each the sum of its 4 lanes there */
    const __m512i lo = _mm512_add_epi32(_mm512_unpacklo_epi64(t[0], t[1]), _mm512_unpackhi_epi64(t[0], t[1]));
    const __m512i hi = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2], t[3]), _mm512_unpackhi_epi64(t[2], t[3]));
    /* 128-bit lanes of lo / hi: part 1 (inputs' lanes 0-3), part 1 (4-7), part 2 (0-3), part 2 (4-7) */
    const __m512i order = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    *a = _mm512_permutexvar_epi32(order, _mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
    *b = _mm512_permutexvar_epi32(order, _mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* rows p[0..7] x one token's records -> res[8] */
GGUF_INLINE void gguf_rows8_fused(const int qt, const int parts, const uint8_t *const *p, const uint8_t *pf,
                                  int64_t K, const GgufTok *tok, float *res) {
    const int kq = gguf_block_size(qt) == 256;
    __m256 acc = _mm256_setzero_ps();
    GgufScales8 ks[8];
    for (int64_t b = 0; b < K / 32; ++b) {
        const GgufTok *t = tok + b;
        const __m512i x = _mm512_loadu_si512(t->q1);  /* q1 then q2 */
        gguf_prefetch_next(qt, pf, b);
        if (kq && b % 8 == 0) gguf_kscales8(qt, p, b / 8, ks);
        const GgufScales8 s = kq ? ks[b % 8] : gguf_scales8(qt, p, b);
        __m512i v[8], ha, hb;
        for (int r = 0; r < 8; ++r) v[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), gguf_wblock2(qt, p[r], b), x);
        gguf_fold16h(v, &ha, &hb);
        const __m256i z = _mm256_setzero_si256();
        if (qt == GGUF_Q6_K) {
            acc = gguf_steps8(qt, parts, _mm512_castsi512_si256(ha), _mm512_castsi512_si256(hb),
                              _mm512_extracti64x4_epi64(ha, 1), _mm512_extracti64x4_epi64(hb, 1), &s, t, acc);
        } else {
            const __m512i i = _mm512_add_epi32(ha, hb);
            acc = gguf_steps8(qt, parts, _mm512_castsi512_si256(i), z, _mm512_extracti64x4_epi64(i, 1), z, &s, t, acc);
        }
    }
    _mm256_storeu_ps(res, acc);
}
#elif defined(GGUF_AVX2)
GGUF_INLINE void gguf_rows8_fused(const int qt, const int parts, const uint8_t *const *p, const uint8_t *pf,
                                  int64_t K, const GgufTok *tok, float *res) {
    const int kq = gguf_block_size(qt) == 256;
    __m256 acc = _mm256_setzero_ps();
    GgufScales8 ks[8];
    for (int64_t b = 0; b < K / 32; ++b) {
        const GgufTok *t = tok + b;
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)t->q1);
        const __m256i x2 = _mm256_loadu_si256((const __m256i *)t->q2);
        gguf_prefetch_next(qt, pf, b);
        if (kq && b % 8 == 0) gguf_kscales8(qt, p, b / 8, ks);
        const GgufScales8 s = kq ? ks[b % 8] : gguf_scales8(qt, p, b);
        __m256i v1[8], v2[8];
        for (int r = 0; r < 8; ++r) {
            const __m256i w = gguf_wblock(qt, p[r], b);
            v1[r] = gguf_dot32(qt, w, x1);
            if (parts == 2) v2[r] = gguf_dot32(qt, w, x2);
        }
        const __m256i z = _mm256_setzero_si256();
        if (qt == GGUF_Q6_K) {
            __m256i i1a, i1b, i2a = z, i2b = z;
            gguf_fold8h(v1, &i1a, &i1b);
            if (parts == 2) gguf_fold8h(v2, &i2a, &i2b);
            acc = gguf_steps8(qt, parts, i1a, i1b, i2a, i2b, &s, t, acc);
        } else {
            acc = gguf_steps8(qt, parts, gguf_fold8(v1), z, parts == 2 ? gguf_fold8(v2) : z, z, &s, t, acc);
        }
    }
    _mm256_storeu_ps(res, acc);
}
#endif

#if defined(GGUF_VNNI) || defined(GGUF_AVX2)
#define GGUF_FUSED_ROWS 1
/* the chunk's rows (row r at w + r * row_bytes; rows past `rows` repeat row 0, computed, never stored) x
 * one token -> res; pf: the next chunk's bytes to prefetch (NULL: none) */
static void gguf_chunk_token_fused(int qt, int parts, const uint8_t *w, int64_t row_bytes, int64_t rows, int64_t K,
                                   const GgufTok *tok, float *res, const uint8_t *pf) {
    const uint8_t *p[8];
    for (int r = 0; r < 8; ++r) p[r] = w + (r < rows ? r : 0) * row_bytes;
#define GGUF_BOTH(Q)                                                                     \
    if (parts == 2) gguf_rows8_fused(Q, 2, p, pf, K, tok, res);                              \
    else gguf_rows8_fused(Q, 1, p, pf, K, tok, res);                                         \
    return
#define GGUF_CASE(Q) case Q: GGUF_BOTH(Q);
    switch (qt) { GGUF_EACH_TYPE(GGUF_CASE) }
#undef GGUF_CASE
#undef GGUF_BOTH
}
#endif
