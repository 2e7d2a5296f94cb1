/* Every kernel of this folder in one library: the first start on a machine compiles once instead of
 * once per file, which is much quicker. decode_layer.c includes the attention, int8,
 * GGUF-block linear and norm kernels it calls; layout.c, last, reports the structs' layout to binding.py.
 */
/* before any system header: syscall() (AMX permission, amx.c) is not ISO C */
#define _DEFAULT_SOURCE
#include "decode_layer.c"
#include "int8_rows_matmul.c"
#include "first_max.c"
#include "layout.c"
