/* One decoder layer of a step in one call, for float32 Llama-family models on CPU whose Linear layers
 * run the native dynamic-int8 kernel or float32 on packed panels (f32_panels.c): norm, QKV, rotary, KV-cache
 * write, paged attention, output projection, norm, gate/up, SiLU * up, down.
 *
 * One-token decode of the default model spends less time in arithmetic than in getting to it: the same
 * layer through PyTorch and ctypes is ~15 dispatches, allocations and Python calls, which take longer
 * than its kernels. Here it is one call. The kernels are the ones the PyTorch path calls
 * (this file includes their sources), so each step computes the same arithmetic; only rotary and SiLU
 * are written out here, in float32 as layers/rotary.py and F.silu do.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py (gcc -O3 -march=native -fopenmp).
 */
#include "f32_panels.c"
#include "fused_norm.c"
#include "gguf_matmul.c"
#include "int8_linear.c"
#include "paged_attention.c"

#define GGUF_SEGMENTS 3 /* a merged projection's runs of rows of one GGUF type each: q, k, v at most */

/* One Linear: int8 (packed panels, scales per output channel and group of `group` inputs, padded
 * inputs), or with f32_panels set float32 in f32_panels.c's layout, or with gguf_segments > 0 a GGUF
 * file's blocks (gguf_matmul.c); bias or NULL; outputs. */
typedef struct {
    const int8_t *panels;
    const float *scale;  /* int8: [panels, groups, 16] */
    const float *bias;
    int64_t n_out, k_padded;
    const float *f32_panels;
    const int16_t *col_sums;  /* int8: each column's weight sum per group, [panels, groups, 16] */
    int64_t group;            /* int8: inputs per scale group */
    const uint8_t *gguf_blocks[GGUF_SEGMENTS];  /* gguf: each segment's rows of blocks, in output order */
    int64_t gguf_type[GGUF_SEGMENTS], gguf_rows[GGUF_SEGMENTS];
    int64_t gguf_segments, gguf_parts;  /* gguf: how many segments; activation parts (1 or 2) */
} Weight;

/* What a layer holds; built once per layer (backends/cpu/decode_layer.py). With `gemma` set, Gemma's
 * layer: q/k norms over each head, a norm after attention and after the MLP added to the residual
 * stream (norms take 1 + w as their weight), GELU (tanh) * up, the layer's own rotary tables (local and
 * global layers differ); with `window_pool` its KV lives in the sliding-window pool (Step's window_*). */
typedef struct {
    Weight qkv, o, gate_up, down;
    const float *input_norm, *post_norm;
    void *k_cache, *v_cache;  /* [num_blocks, block_size, kv_heads, head_dim] */
    int64_t hidden, heads, kv_heads, head_dim, intermediate, block_size, window, cache_dtype;
    const float *q_norm, *k_norm, *pre_ff_norm, *post_ff_norm;  /* gemma */
    const float *cos, *sin;                                      /* gemma: [max_positions, head_dim] */
    int64_t gemma, window_pool;
    float eps, scale;
} Layer;

/* What a step gives every layer. */
typedef struct {
    const int64_t *positions, *slots, *block_tables, *token_rows;  /* [T], [T], [T, max_blocks], [T] */
    const float *cos, *sin;                                        /* [max_positions, head_dim] */
    int64_t tokens, max_blocks;
    const int64_t *window_slots, *window_block_tables;  /* the sliding-window pool's, where there is one */
    int64_t window_max_blocks;
    int threads;
} Step;

static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);  /* round to nearest even, as torch's float -> bfloat16 */
    return (uint16_t)(u >> 16);
}

/* The segments side by side in each output row, the activations quantized once for all of them. */
static int gguf_segments_linear(float *out, const float *x, const Weight *w, int64_t T, int64_t K, int threads) {
    const int64_t tail = T % GGUF_GROUP;
    if (tail > 4) {
        /* leftover rows run one at a time on the blocks; more than four cost more than one more group of
         * zero rows (results per row are the same either way), as quantization/gguf.py pads them too */
        const int64_t padded = T - tail + GGUF_GROUP;
        float *xp = calloc((size_t)(padded * K), sizeof(float));
        float *op = malloc(sizeof(float) * (size_t)(padded * w->n_out));
        int failed = !xp || !op;
        if (!failed) {
            memcpy(xp, x, sizeof(float) * (size_t)(T * K));
            failed = gguf_segments_linear(op, xp, w, padded, K, threads);
            if (!failed) memcpy(out, op, sizeof(float) * (size_t)(T * w->n_out));
        }
        free(xp);
        free(op);
        return failed;
    }
    void *qx = malloc((size_t)gguf_act_bytes(T, K, (int)w->gguf_parts));
    if (!qx) return 1;
    gguf_quantize_act(qx, x, T, K, (int)w->gguf_parts, threads);
    int failed = 0;
    for (int64_t s = 0, row = 0; s < w->gguf_segments && !failed; row += w->gguf_rows[s], ++s)
        failed = gguf_matmul_q(out + row, w->n_out, qx, T, K, w->gguf_blocks[s], w->gguf_rows[s],
                               (int)w->gguf_type[s], (int)w->gguf_parts, threads) != 0;
    free(qx);
    if (!failed && w->bias)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < w->n_out; ++n) out[t * w->n_out + n] += w->bias[n];
    return failed;
}

static int linear(float *out, const float *x, const Weight *w, int64_t T, int64_t K, int threads) {
    if (w->gguf_segments > 0) return gguf_segments_linear(out, x, w, T, K, threads);
    if (w->f32_panels) {
        f32_panels_linear(out, x, w->f32_panels, w->bias, T, K, w->n_out, threads);
        return 0;
    }
    return int8_linear(out, x, w->panels, w->scale, w->col_sums, w->bias, T, K, w->n_out, w->k_padded, w->group,
                       threads);
}

/* x * cos + rotate_half(x) * sin on every head of a row, at the row's position: two products and a sum,
 * rounded as PyTorch's three ops round them (no fused multiply-add). */
__attribute__((optimize("fp-contract=off"))) static void rotate(float *row, int64_t heads, int64_t D, const float *cos, const float *sin) {
    const int64_t half = D / 2;
    float tmp[512];
    for (int64_t h = 0; h < heads; ++h) {
        float *x = row + h * D;
        memcpy(tmp, x, sizeof(float) * (size_t)D);
        for (int64_t d = 0; d < half; ++d) x[d] = tmp[d] * cos[d] + (-tmp[d + half]) * sin[d];
        for (int64_t d = half; d < D; ++d) x[d] = tmp[d] * cos[d] + tmp[d - half] * sin[d];
    }
}

static void write_cache(void *cache, int64_t dtype, int64_t slot, const float *row, int64_t width) {
    if (dtype == CACHE_F32) {
        memcpy((float *)cache + slot * width, row, sizeof(float) * (size_t)width);
        return;
    }
    uint16_t *dst = (uint16_t *)cache + slot * width;
    for (int64_t i = 0; i < width; ++i) dst[i] = to_bf16(row[i]);
}

/* Floats of work memory one call needs per token. */
int64_t decode_layer_work(const Layer *L) {
    const int64_t q_width = L->heads * L->head_dim, kv_width = L->kv_heads * L->head_dim;
    const int64_t attention = q_width + 2 * kv_width + 2 * q_width;  /* qkv, q, att: dead once o has run */
    /* SiLU's output reuses the attention buffers when they are large enough */
    return L->hidden + (attention > L->intermediate ? attention : L->intermediate) + 2 * L->intermediate;
}

/* GELU with tanh, F.gelu(approximate="tanh"): 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3),
 * written as x / (1 + exp(-2u)) (the same function; float32 rounding apart), so that it vectorizes
 * with exp16 as SiLU does: a libm tanhf call per element took a large share of a batched step. */
#define GELU_C (-2.f * 0.7978845608028654f)
static inline float gelu_tanh(float x) { return x / (1.f + expf(GELU_C * x * (1.f + 0.044715f * x * x))); }

static void gelu_tanh_times(float *a, const float *g, const float *u, int64_t n) {
    int64_t i = 0;
#ifdef __AVX512F__
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(0.044715f), _mm512_set1_ps(1.f));
        const __m512 e = exp16(_mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(GELU_C)), inner));
        _mm512_storeu_ps(a + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e)),
                                              _mm512_loadu_ps(u + i)));
    }
#endif
    for (; i < n; ++i) a[i] = gelu_tanh(g[i]) * u[i];
}

/* Gemma's layer (see Layer): hidden is the residual stream itself. */
static int gemma_layer(const Layer *L, const Step *S, float *hidden, float *x) {
    const int64_t T = S->tokens, D = L->hidden, Dh = L->head_dim, H = L->heads, Hkv = L->kv_heads;
    const int64_t q_width = H * Dh, kv_width = Hkv * Dh, qkv_width = q_width + 2 * kv_width;
    const int64_t attention = qkv_width + 2 * q_width;
    float *qkv = x + T * D, *q = qkv + T * qkv_width, *att = q + T * q_width;
    float *act = qkv;
    float *gate_up = qkv + T * (attention > L->intermediate ? attention : L->intermediate);
    const int64_t *slots = L->window_pool ? S->window_slots : S->slots;
    const int64_t *tables = L->window_pool ? S->window_block_tables : S->block_tables;
    const int64_t max_blocks = L->window_pool ? S->window_max_blocks : S->max_blocks;
    int failed = 0;

    rms_norm(x, NULL, hidden, NULL, L->input_norm, L->eps, T, D, S->threads);
    failed |= linear(qkv, x, &L->qkv, T, D, S->threads);
#pragma omp parallel for num_threads(S->threads) schedule(static) if (T >= 64 && !failed)
    for (int64_t t = 0; t < T; ++t) {
        float *row = qkv + t * qkv_width;
        const int64_t pos = S->positions[t];
        rms_norm(row, NULL, row, NULL, L->q_norm, L->eps, H, Dh, 1);
        rms_norm(row + q_width, NULL, row + q_width, NULL, L->k_norm, L->eps, Hkv, Dh, 1);
        rotate(row, H + Hkv, Dh, L->cos + pos * Dh, L->sin + pos * Dh);
        memcpy(q + t * q_width, row, sizeof(float) * (size_t)q_width);
        write_cache(L->k_cache, L->cache_dtype, slots[t], row + q_width, kv_width);
        write_cache(L->v_cache, L->cache_dtype, slots[t], row + q_width + kv_width, kv_width);
    }
    if (!failed)
        failed |= paged_attention(att, q, L->k_cache, L->v_cache, (int)L->cache_dtype, tables, max_blocks,
                                  S->token_rows, S->positions, T, H, Hkv, Dh, L->block_size, L->scale, L->window,
                                  S->threads) != 0;
    if (!failed) failed |= linear(x, att, &L->o, T, q_width, S->threads);
    if (failed) return failed;
    rms_norm(x, NULL, x, NULL, L->post_norm, L->eps, T, D, S->threads);
    for (int64_t i = 0; i < T * D; ++i) hidden[i] += x[i];
    rms_norm(x, NULL, hidden, NULL, L->pre_ff_norm, L->eps, T, D, S->threads);
    failed |= linear(gate_up, x, &L->gate_up, T, D, S->threads);
    if (failed) return failed;
    const int64_t I = L->intermediate;
#pragma omp parallel for num_threads(S->threads) schedule(static) if (T >= 64)
    for (int64_t t = 0; t < T; ++t) gelu_tanh_times(act + t * I, gate_up + t * 2 * I, gate_up + t * 2 * I + I, I);
    failed |= linear(x, act, &L->down, T, I, S->threads);
    if (failed) return failed;
    rms_norm(x, NULL, x, NULL, L->post_ff_norm, L->eps, T, D, S->threads);
    for (int64_t i = 0; i < T * D; ++i) hidden[i] += x[i];
    return 0;
}

/* hidden [T, hidden]: in, the previous layer's output (the embeddings when first); out, this layer's.
 * residual [T, hidden]: the residual stream, updated in place. work: T * decode_layer_work(L) floats,
 * or NULL to allocate them here. The step's tokens may be several per sequence (a prompt): each
 * attends to its own sequence up to its position, and every token's K and V are written first.
 * Returns 0, or 1 when memory ran out. */
int decode_layer(const Layer *L, const Step *S, float *hidden, float *residual, int first, float *work) {
    const int64_t T = S->tokens, D = L->hidden, Dh = L->head_dim, H = L->heads, Hkv = L->kv_heads;
    const int64_t q_width = H * Dh, kv_width = Hkv * Dh, qkv_width = q_width + 2 * kv_width;
    if (Dh > 512) return 1;
    float *x = work ? work : malloc(sizeof(float) * (size_t)(T * decode_layer_work(L)));
    if (!x) return 1;
    if (L->gemma) {
        (void)residual, (void)first;
        const int failed = gemma_layer(L, S, hidden, x);
        if (!work) free(x);
        return failed;
    }
    const int64_t attention = qkv_width + 2 * q_width;
    float *qkv = x + T * D, *q = qkv + T * qkv_width, *att = q + T * q_width;
    float *act = qkv;  /* written after the attention buffers are last read */
    float *gate_up = qkv + T * (attention > L->intermediate ? attention : L->intermediate);
    int failed = 0;

    if (first) {
        memcpy(residual, hidden, sizeof(float) * (size_t)(T * D));
        rms_norm(x, NULL, hidden, NULL, L->input_norm, L->eps, T, D, S->threads);
    } else {
        rms_norm(x, residual, hidden, residual, L->input_norm, L->eps, T, D, S->threads);
    }
    failed |= linear(qkv, x, &L->qkv, T, D, S->threads);
#pragma omp parallel for num_threads(S->threads) schedule(static) if (T >= 64 && !failed)
    for (int64_t t = 0; t < T; ++t) {
        float *row = qkv + t * qkv_width;
        const int64_t pos = S->positions[t];
        rotate(row, H + Hkv, Dh, S->cos + pos * Dh, S->sin + pos * Dh);  /* q and k heads sit side by side */
        memcpy(q + t * q_width, row, sizeof(float) * (size_t)q_width);
        write_cache(L->k_cache, L->cache_dtype, S->slots[t], row + q_width, kv_width);
        write_cache(L->v_cache, L->cache_dtype, S->slots[t], row + q_width + kv_width, kv_width);
    }
    if (!failed)
        failed |= paged_attention(att, q, L->k_cache, L->v_cache, (int)L->cache_dtype, S->block_tables,
                                  S->max_blocks, S->token_rows, S->positions, T, H, Hkv, Dh, L->block_size,
                                  L->scale, L->window, S->threads) != 0;
    if (!failed) failed |= linear(x, att, &L->o, T, q_width, S->threads);
    if (!failed) {
        rms_norm(x, residual, x, residual, L->post_norm, L->eps, T, D, S->threads);
        failed |= linear(gate_up, x, &L->gate_up, T, D, S->threads);
    }
    if (!failed) {
        const int64_t I = L->intermediate;
#pragma omp parallel for num_threads(S->threads) schedule(static) if (T >= 64)
        for (int64_t t = 0; t < T; ++t) {
            const float *g = gate_up + t * 2 * I, *u = g + I;
            float *a = act + t * I;
            int64_t i = 0;
#ifdef __AVX512F__
            for (; i + 16 <= I; i += 16) {
                const __m512 gv = _mm512_loadu_ps(g + i);
                const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
                _mm512_storeu_ps(a + i, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.f), e)),
                                                      _mm512_loadu_ps(u + i)));
            }
#endif
            for (; i < I; ++i) a[i] = g[i] / (1.f + expf(-g[i])) * u[i];
        }
        failed |= linear(hidden, act, &L->down, T, I, S->threads);
    }
    if (!work) free(x);
    return failed;
}
