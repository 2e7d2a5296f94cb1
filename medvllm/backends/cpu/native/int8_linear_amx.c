/* The AMX path of the int8 Linear (int8_linear.c includes it): blocks of 16 tokens meet 16 output
 * columns in one tile instruction (s8 x s8 into exact int32 sums); the panel layout is the tile's B
 * layout already, so the weight is read as it is stored. The tile sums are stored at the end of each
 * group of G inputs (a multiple of 64, the tile depth) and folded into float sums as on the other paths.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py, as part of the kernels library.
 */
#ifdef HAVE_AMX
#define AMX_ROWS 16  /* tokens per tile */
/* From this many tokens on, all of them go through AMX, the last tile padded with zero tokens: padding
 * costs less than a second pass over the weights for the rest; below it, VNNI, which is quicker there
 * than AMX. */
#define AMX_MIN_TOKENS 5

/* Tokens [m, m + 16 * row_tiles) x panels [p, p + panel_tiles), 1 or 2 of each, over all of K, a group
 * of G inputs (whole tiles deep) at a time: each group's int32 tile sums are stored and folded into the
 * float sums as the other paths fold theirs (fold_group). tmm0-3: int32 sums of the 2 x 2 blocks (16
 * tokens x 16 columns); tmm4-5: tokens; tmm6-7: weights. */
static void amx_block(int row_tiles, int panel_tiles, const int8_t *q, int64_t m, const int8_t *packed,
                      int64_t p, int64_t Kp, int64_t G, const float *steps, const float *w_scale, const float *bias,
                      float *out, int64_t N, const int8_t *ahead, int64_t M) {
    const int64_t ng = (Kp + G - 1) / G;
    const int8_t *a0 = q + m * Kp, *a1 = a0 + AMX_ROWS * Kp;
    const int8_t *b0 = packed + p * PANEL * Kp, *b1 = b0 + PANEL * Kp;
    float total[4][AMX_ROWS][PANEL];
    memset(total, 0, sizeof total);
    int32_t acc[4][AMX_ROWS][PANEL];
    for (int64_t k0 = 0, gi = 0; k0 < Kp; k0 += G, ++gi) {
        const int64_t k1 = k0 + G < Kp ? k0 + G : Kp;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int64_t k = k0; k < k1; k += 64) {
            if (ahead)  /* the matching KiB of the next two panels */
                for (int i = 0; i < 16; ++i) {
                    _mm_prefetch((const char *)(ahead + 16 * k + 64 * i), _MM_HINT_T0);
                    _mm_prefetch((const char *)(ahead + PANEL * Kp + 16 * k + 64 * i), _MM_HINT_T0);
                }
            _tile_loadd(4, a0 + k, Kp);
            _tile_loadd(6, b0 + 16 * k, 64);  /* 16 groups of 4 inputs: 1 KiB of the panel */
            _tile_dpbssd(0, 4, 6);
            if (panel_tiles == 2) {
                _tile_loadd(7, b1 + 16 * k, 64);
                _tile_dpbssd(1, 4, 7);
            }
            if (row_tiles == 2) {
                _tile_loadd(5, a1 + k, Kp);
                _tile_dpbssd(2, 5, 6);
                if (panel_tiles == 2) _tile_dpbssd(3, 5, 7);
            }
        }
        _tile_stored(0, acc[0], 64);
        if (panel_tiles == 2) _tile_stored(1, acc[1], 64);
        if (row_tiles == 2) _tile_stored(2, acc[2], 64);
        if (row_tiles == 2 && panel_tiles == 2) _tile_stored(3, acc[3], 64);
        for (int i = 0; i < row_tiles; ++i)
            for (int j = 0; j < panel_tiles; ++j)
                fold_group(AMX_ROWS, (const int32_t (*)[PANEL])acc[2 * i + j], steps + (m + i * AMX_ROWS) * ng + gi,
                           ng, w_scale + ((p + j) * ng + gi) * PANEL, total[2 * i + j]);
    }
    for (int i = 0; i < row_tiles; ++i)
        for (int j = 0; j < panel_tiles; ++j) {
            const int64_t first = m + i * AMX_ROWS;
            const int count = M - first < AMX_ROWS ? (int)(M - first) : AMX_ROWS;  /* padding rows: no output */
            if (count <= 0) continue;
            float *os[AMX_ROWS];
            for (int r = 0; r < count; ++r) os[r] = out + (first + r) * N;
            store_panel(count, (const float (*)[PANEL])total[2 * i + j], bias, os, (p + j) * PANEL, N);
        }
}

/* The first `rows` tokens (a multiple of 16) through AMX, in blocks of 32 tokens x 32 columns. */
static void amx_rows(const int8_t *q, int64_t rows, const int8_t *packed, int64_t Kp, int64_t G, const float *steps,
                     const float *w_scale, const float *bias, float *out, int64_t N, int threads, int64_t M) {
    const int64_t panels = (N + PANEL - 1) / PANEL, row_pairs = (rows / AMX_ROWS + 1) / 2,
                  panel_pairs = (panels + 1) / 2;
#pragma omp parallel num_threads(threads)
    {
        amx_configure();
        /* Up to 64 tokens (decode), panels outermost: a thread's share is whole panels, each read from
         * memory once a call (tokens outermost, both threads read every weight, and the time grows
         * with the tokens). More tokens (prompts), tokens outermost: a thread's tokens stay in L1 while
         * the panels stream from L2 (faster on long prompts than the other order). */
        const int64_t blocks = row_pairs * panel_pairs;
        const int by_panel = row_pairs <= 2;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; ++b) {
            const int64_t i = by_panel ? b % row_pairs : b / panel_pairs;
            const int64_t j = by_panel ? b / row_pairs : b % panel_pairs;
            const int64_t m = 2 * i * AMX_ROWS, p = 2 * j;
            /* by panel, the first tokens of a panel pair read it from memory: ask for the next pair meanwhile */
            const int8_t *ahead = row_pairs == 1 && p + 2 < panels ? packed + (p + 2) * PANEL * Kp : NULL;
            amx_block(m + 2 * AMX_ROWS <= rows ? 2 : 1, p + 2 <= panels ? 2 : 1, q, m, packed, p, Kp, G,
                      steps, w_scale, bias, out, N, ahead, M);
        }
        _tile_release();
    }
}
#endif
