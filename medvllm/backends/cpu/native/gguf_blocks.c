/* GGUF (ggml) weight blocks: their sizes, half floats, and unpacking a row of blocks into what the
 * matmul kernels multiply: one unsigned byte per weight plus float scales per 32 inputs.
 *
 * Layouts (gguf-py's gguf/quants.py is the reference; its dequantize is what gguf_dequant.c matches):
 *   Q4_0  18 B / 32: d f16, 16 B of nibbles (low: inputs 0-15, high: 16-31); w = d * (q - 8)
 *   Q4_1  20 B / 32: d, m f16, nibbles as Q4_0; w = d * q + m
 *   Q5_0  22 B / 32: d, 32-bit word of fifth bits (bit i: input i), nibbles; w = d * (q - 16)
 *   Q5_1  24 B / 32: d, m, fifth bits, nibbles; w = d * q + m
 *   Q8_0  34 B / 32: d, 32 int8; w = d * q
 *   Q4_K 144 B / 256: d, dmin f16, 12 B of 6-bit scales and mins (8 sub-blocks of 32), 128 B of nibbles
 *        (32 bytes hold sub-blocks 2c in the low and 2c + 1 in the high nibbles); w = d*sc * q - dmin*m
 *   Q5_K 176 B / 256: as Q4_K plus 32 B of fifth bits (bit j of byte l: input l of sub-block j)
 *   Q6_K 210 B / 256: 128 B low nibbles, 64 B high 2-bit pairs, 16 int8 scales (per 16 inputs), d f16;
 *        w = d*sc * (q - 32)
 *
 * Unpacked, each weight is the unsigned integer q (0..15, 0..31, 0..63): the u8 side of the SIMD multiply
 * while the int8 activation is the signed side, so no pair of products saturates in int16. The offsets
 * (8, 16, 32) come off later with the activation block's integer sum. Q8_0 is signed: with VNNI it goes
 * in as q + 128 (offset 128); otherwise as is (the AVX2 kernels move its sign onto the activation).
 */
#ifndef GGUF_BLOCKS_C
#define GGUF_BLOCKS_C
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__) && defined(__FMA__)
#define GGUF_VNNI 1
#elif defined(__AVX2__) && defined(__FMA__)
#define GGUF_AVX2 1
#endif

enum { GGUF_Q4_0 = 2, GGUF_Q4_1 = 3, GGUF_Q5_0 = 6, GGUF_Q5_1 = 7, GGUF_Q8_0 = 8,
       GGUF_Q4_K = 12, GGUF_Q5_K = 13, GGUF_Q6_K = 14 };
/* One case per type, for the dispatch switches that compile a kernel per constant type: X(type) each. */
#define GGUF_EACH_TYPE(X) X(GGUF_Q4_0) X(GGUF_Q4_1) X(GGUF_Q5_0) X(GGUF_Q5_1) X(GGUF_Q8_0) X(GGUF_Q4_K) X(GGUF_Q5_K) X(GGUF_Q6_K)

#ifdef GGUF_VNNI
#define GGUF_Q8_OFFSET 128 /* Q8_0 unpacked as q + 128: vpdpbusd's unsigned side */
#else
#define GGUF_Q8_OFFSET 0
#endif

/* inputs per block (0: a type these kernels do not take) and bytes per block */
static int gguf_block_size(int qtype) {
    switch (qtype) {
        case GGUF_Q4_0: case GGUF_Q4_1: case GGUF_Q5_0: case GGUF_Q5_1: case GGUF_Q8_0: return 32;
        case GGUF_Q4_K: case GGUF_Q5_K: case GGUF_Q6_K: return 256;
        default: return 0;
    }
}

static int gguf_type_size(int qtype) {
    switch (qtype) {
        case GGUF_Q4_0: return 18;
        case GGUF_Q4_1: return 20;
        case GGUF_Q5_0: return 22;
        case GGUF_Q5_1: return 24;
        case GGUF_Q8_0: return 34;
        case GGUF_Q4_K: return 144;
        case GGUF_Q5_K: return 176;
        case GGUF_Q6_K: return 210;
        default: return 0;
    }
}

/* IEEE half -> float, exact (F16C where the CPU has it) */
static inline float gguf_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else {  /* zero or subnormal: mant * 2^-24, exact in float */
        const float f = (float)mant * 5.9604644775390625e-8f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Q4_K / Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes */
static inline void gguf_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63, *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* One row of K weights -> u[K] (one byte each) and, per 32 inputs b, at [b * stride]: ws (the float step),
 * wm (the float weight added per unit of the input's sum: Q4_1/Q5_1's m, the K-quants' -dmin*m; else 0).
 * Q6_K has a step per 16-input half: ws = d * (the first's int scale), wm = d * (the second's), exact in
 * float (11 bits by 8). */
static void gguf_unpack_row_c(int qtype, const uint8_t *row, int64_t K, uint8_t *u, float *ws, float *wm,
                              int stride) {
    const int64_t nb = K / 32;
    switch (qtype) {
        case GGUF_Q4_0:
        case GGUF_Q4_1: {
            const int ts = qtype == GGUF_Q4_0 ? 18 : 20, head = ts - 16;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *p = row + b * ts, *q = p + head;
                uint8_t *o = u + 32 * b;
                for (int j = 0; j < 16; ++j) o[j] = q[j] & 15, o[j + 16] = q[j] >> 4;
                ws[b * stride] = gguf_half(p);
                wm[b * stride] = qtype == GGUF_Q4_1 ? gguf_half(p + 2) : 0.f;
            }
            break;
        }
        case GGUF_Q5_0:
        case GGUF_Q5_1: {
            const int ts = qtype == GGUF_Q5_0 ? 22 : 24, head = ts - 20;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *p = row + b * ts, *q = p + head + 4;
                uint32_t qh;
                memcpy(&qh, p + head, 4);
                uint8_t *o = u + 32 * b;
                for (int j = 0; j < 16; ++j) {
                    o[j] = (uint8_t)((q[j] & 15) | ((qh >> j) & 1) << 4);
                    o[j + 16] = (uint8_t)((q[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
                }
                ws[b * stride] = gguf_half(p);
                wm[b * stride] = qtype == GGUF_Q5_1 ? gguf_half(p + 2) : 0.f;
            }
            break;
        }
        case GGUF_Q8_0:
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *p = row + b * 34;
                for (int j = 0; j < 32; ++j) u[32 * b + j] = (uint8_t)(p[2 + j] ^ (GGUF_Q8_OFFSET ? 0x80 : 0));
                ws[b * stride] = gguf_half(p), wm[b * stride] = 0.f;
            }
            break;
        case GGUF_Q4_K:
        case GGUF_Q5_K: {
            const int ts = qtype == GGUF_Q4_K ? 144 : 176;
            for (int64_t s = 0; s < K / 256; ++s) {
                const uint8_t *p = row + s * ts, *scales = p + 4;
                const uint8_t *qh = p + 16, *qs = qtype == GGUF_Q4_K ? p + 16 : p + 48;
                const float d = gguf_half(p), dmin = gguf_half(p + 2);
                for (int j = 0; j < 8; ++j) {
                    int sc, m;
                    gguf_scale_min(scales, j, &sc, &m);
                    const int64_t b = 8 * s + j;
                    ws[b * stride] = d * (float)sc;
                    wm[b * stride] = -(dmin * (float)m);
                    const uint8_t *q = qs + 32 * (j / 2);
                    const int shift = 4 * (j & 1);
                    uint8_t *o = u + 32 * b;
                    if (qtype == GGUF_Q4_K)
                        for (int l = 0; l < 32; ++l) o[l] = (q[l] >> shift) & 15;
                    else
                        for (int l = 0; l < 32; ++l) o[l] = (uint8_t)(((q[l] >> shift) & 15) | ((qh[l] >> j) & 1) << 4);
                }
            }
            break;
        }
        case GGUF_Q6_K:
            for (int64_t s = 0; s < K / 256; ++s) {
                const uint8_t *p = row + s * 210, *ql = p, *qh = p + 128;
                const int8_t *sc = (const int8_t *)(p + 192);
                const float d = gguf_half(p + 208);
                for (int j = 0; j < 8; ++j) {  /* 32 inputs: half h of the block, quarter k of it */
                    const int h = j / 4, k = j % 4;
                    const uint8_t *lo = ql + 64 * h + 32 * (k & 1), *hi = qh + 32 * h;
                    const int lshift = 4 * (k >> 1), hshift = 2 * k;
                    uint8_t *o = u + 256 * s + 32 * j;
                    for (int l = 0; l < 32; ++l)
                        o[l] = (uint8_t)(((lo[l] >> lshift) & 15) | ((hi[l] >> hshift) & 3) << 4);
                    const int64_t b = 8 * s + j;
                    ws[b * stride] = d * (float)sc[2 * j], wm[b * stride] = d * (float)sc[2 * j + 1];
                }
            }
            break;
    }
}

#ifdef __AVX2__
/* 16 bytes of nibbles -> 32 bytes: the low nibbles, then the high ones */
static inline __m256i gguf_nibbles16(const uint8_t *q) {
    const __m128i v = _mm_loadu_si128((const __m128i *)q), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* a 32-bit word of bits -> 32 bytes, 16 where bit i of the word is set, else 0 */
static inline __m256i gguf_bits16(uint32_t bits) {
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    const __m256i mask = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask), _mm256_set1_epi8(16));
}

/* bits of each byte selected by shifting left (n > 0) or right (n < 0), masked */
static inline __m256i gguf_shift_mask(__m256i v, int n, int mask) {
    const __m256i t = n > 0 ? _mm256_slli_epi16(v, n) : n < 0 ? _mm256_srli_epi16(v, -n) : v;
    return _mm256_and_si256(t, _mm256_set1_epi8((char)mask));
}

/* the same bytes and scales as gguf_unpack_row_c, 32 weights per register */
static void gguf_unpack_row(int qtype, const uint8_t *row, int64_t K, uint8_t *u, float *ws, float *wm,
                            int stride) {
    const int64_t nb = K / 32;
    __m256i *o = (__m256i *)u;
    switch (qtype) {
        case GGUF_Q4_0:
        case GGUF_Q4_1: {
            const int ts = qtype == GGUF_Q4_0 ? 18 : 20, head = ts - 16;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *p = row + b * ts;
                _mm256_storeu_si256(o + b, gguf_nibbles16(p + head));
                ws[b * stride] = gguf_half(p);
                wm[b * stride] = qtype == GGUF_Q4_1 ? gguf_half(p + 2) : 0.f;
            }
            return;
        }
        case GGUF_Q5_0:
        case GGUF_Q5_1: {
            const int ts = qtype == GGUF_Q5_0 ? 22 : 24, head = ts - 20;
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *p = row + b * ts;
                uint32_t qh;
                memcpy(&qh, p + head, 4);
                _mm256_storeu_si256(o + b, _mm256_or_si256(gguf_nibbles16(p + head + 4), gguf_bits16(qh)));
                ws[b * stride] = gguf_half(p);
                wm[b * stride] = qtype == GGUF_Q5_1 ? gguf_half(p + 2) : 0.f;
            }
            return;
        }
        case GGUF_Q8_0:
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t *p = row + b * 34;
                const __m256i v = _mm256_loadu_si256((const __m256i *)(p + 2));
                _mm256_storeu_si256(o + b, GGUF_Q8_OFFSET ? _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)) : v);
                ws[b * stride] = gguf_half(p), wm[b * stride] = 0.f;
            }
            return;
        case GGUF_Q4_K:
        case GGUF_Q5_K: {
            const int ts = qtype == GGUF_Q4_K ? 144 : 176;
            for (int64_t s = 0; s < K / 256; ++s) {
                const uint8_t *p = row + s * ts, *scales = p + 4;
                const uint8_t *qs = qtype == GGUF_Q4_K ? p + 16 : p + 48;
                const __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 16));
                const float d = gguf_half(p), dmin = gguf_half(p + 2);
                for (int j = 0; j < 8; ++j) {
                    int sc, m;
                    gguf_scale_min(scales, j, &sc, &m);
                    const int64_t b = 8 * s + j;
                    ws[b * stride] = d * (float)sc;
                    wm[b * stride] = -(dmin * (float)m);
                    __m256i v = gguf_shift_mask(_mm256_loadu_si256((const __m256i *)(qs + 32 * (j / 2))), -4 * (j & 1), 15);
                    if (qtype == GGUF_Q5_K) v = _mm256_or_si256(v, gguf_shift_mask(qh, 4 - j, 16));
                    _mm256_storeu_si256(o + b, v);
                }
            }
            return;
        }
        case GGUF_Q6_K:
            for (int64_t s = 0; s < K / 256; ++s) {
                const uint8_t *p = row + s * 210;
                const int8_t *sc = (const int8_t *)(p + 192);
                const float d = gguf_half(p + 208);
                for (int j = 0; j < 8; ++j) {
                    const int h = j / 4, k = j % 4;
                    const __m256i lo = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32 * (k & 1)));
                    const __m256i hi = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
                    const int64_t b = 8 * s + j;
                    _mm256_storeu_si256(o + b, _mm256_or_si256(gguf_shift_mask(lo, -4 * (k >> 1), 15),
                                                               gguf_shift_mask(hi, 4 - 2 * k, 0x30)));
                    ws[b * stride] = d * (float)sc[2 * j], wm[b * stride] = d * (float)sc[2 * j + 1];
                }
            }
            return;
    }
}
#else
#define gguf_unpack_row gguf_unpack_row_c
#endif

/* the weight value's integer offset: what comes off with 'offset * the activation block's sum' */
static inline int gguf_offset(int qtype) {
    switch (qtype) {
        case GGUF_Q4_0: return 8;
        case GGUF_Q5_0: return 16;
        case GGUF_Q8_0: return GGUF_Q8_OFFSET;
        case GGUF_Q6_K: return 32;
        default: return 0;
    }
}

static inline int gguf_has_min(int qtype) {
    return qtype == GGUF_Q4_1 || qtype == GGUF_Q5_1 || qtype == GGUF_Q4_K || qtype == GGUF_Q5_K;
}
#endif /* GGUF_BLOCKS_C */
