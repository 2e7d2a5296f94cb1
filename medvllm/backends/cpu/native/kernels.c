/* Every kernel of this folder in one library: the first start on a machine compiles once (~1.7 s
 * here) instead of once per file (~3.7 s in all). decode_layer.c includes the attention, int8 linear
 * and norm kernels it calls.
 */
/* before any system header: syscall() (AMX permission, amx.c) is not ISO C */
#define _DEFAULT_SOURCE
#include "decode_layer.c"
#include "int8_rows_matmul.c"
#include "first_max.c"
#include "layout.c"
