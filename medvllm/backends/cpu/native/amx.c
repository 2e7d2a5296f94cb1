/* AMX set-up shared by the kernels that use tiles (int8_linear.c, int8_rows_amx.c).
 *
 * Linux hands out the AMX register state only on request, once per process; each thread then loads a
 * tile configuration before its first tile instruction. Every kernel here uses the same one: all eight
 * tiles 16 rows of 64 bytes.
 */
#ifndef MEDVLLM_AMX
#define MEDVLLM_AMX
#if defined(__AMX_TILE__) && defined(__linux__)
#define HAVE_AMX_TILES 1
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE  /* syscall(): before any system header (kernels.c defines it first) */
#endif
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_ready(void) {
    static int state;  /* 0: not asked yet, 1: granted, -1: refused */
    if (state == 0) state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
    return state == 1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

static void amx_configure(void) {
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    /* GCC 12 declares _tile_loadconfig's operand as 8 bytes and may drop the stores above: keep them */
    __asm__ volatile("" ::: "memory");
    _tile_loadconfig(&cfg);
}
#endif
#endif
