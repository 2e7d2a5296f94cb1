/* The layout of what Python fills in for the kernels, reported from the compiler's side: the structs of
 * decode_layer.c (their size, every field's offset and size) and the constants the Python side relies on.
 * binding.py declares the same structs with ctypes and compares both at load, so a field added,
 * moved or resized on one side only stops the loader before any kernel reads a misplaced pointer.
 *
 * Built at first use by medvllm/backends/cpu/native/build.py, included from kernels.c after the kernels.
 */
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *group, *name;  /* name "" stands for the whole struct */
    int64_t value, size;       /* a field's offset and size; the struct's size twice; a constant and 0 */
} LayoutEntry;

#define SIZE(s) {#s, "", (int64_t)sizeof(s), (int64_t)sizeof(s)}
#define FIELD(s, f) {#s, #f, (int64_t)offsetof(s, f), (int64_t)sizeof(((s *)0)->f)}
#define CONSTANT(c) {"constants", #c, (int64_t)(c), 0}

static const LayoutEntry LAYOUT[] = {
    SIZE(Weight), FIELD(Weight, panels), FIELD(Weight, scale), FIELD(Weight, bias), FIELD(Weight, n_out),
    FIELD(Weight, k_padded), FIELD(Weight, f32_panels), FIELD(Weight, col_sums), FIELD(Weight, group),
    FIELD(Weight, gguf_blocks), FIELD(Weight, gguf_type), FIELD(Weight, gguf_rows), FIELD(Weight, gguf_segments),
    FIELD(Weight, gguf_parts),

    SIZE(Layer), FIELD(Layer, qkv), FIELD(Layer, o), FIELD(Layer, gate_up), FIELD(Layer, down),
    FIELD(Layer, input_norm), FIELD(Layer, post_norm), FIELD(Layer, k_cache), FIELD(Layer, v_cache),
    FIELD(Layer, hidden), FIELD(Layer, heads), FIELD(Layer, kv_heads), FIELD(Layer, head_dim),
    FIELD(Layer, intermediate), FIELD(Layer, block_size), FIELD(Layer, window), FIELD(Layer, cache_dtype),
    FIELD(Layer, eps), FIELD(Layer, scale), FIELD(Layer, q_norm), FIELD(Layer, k_norm), FIELD(Layer, pre_ff_norm),
    FIELD(Layer, post_ff_norm), FIELD(Layer, cos), FIELD(Layer, sin), FIELD(Layer, gemma), FIELD(Layer, window_pool),

    SIZE(Step), FIELD(Step, positions), FIELD(Step, slots), FIELD(Step, block_tables), FIELD(Step, token_rows),
    FIELD(Step, cos), FIELD(Step, sin), FIELD(Step, tokens), FIELD(Step, max_blocks), FIELD(Step, threads),
    FIELD(Step, window_slots), FIELD(Step, window_block_tables), FIELD(Step, window_max_blocks),

    CONSTANT(CACHE_F32), CONSTANT(CACHE_BF16), CONSTANT(PANEL_COLS), CONSTANT(PANEL), CONSTANT(GGUF_SEGMENTS),
};

#undef SIZE
#undef FIELD
#undef CONSTANT

/* How many entries layout_entry reports. */
int64_t layout_entries(void) { return (int64_t)(sizeof(LAYOUT) / sizeof(LAYOUT[0])); }

/* Entry i: its group (a struct's name, or "constants"), name and size through the pointers, its value
 * returned: a struct's size (name ""), a field's offset, or a constant. -1 past the end. */
int64_t layout_entry(int64_t i, const char **group, const char **name, int64_t *size) {
    if (i < 0 || i >= layout_entries()) return -1;
    *group = LAYOUT[i].group;
    *name = LAYOUT[i].name;
    *size = LAYOUT[i].size;
    return LAYOUT[i].value;
}
