"""The one typed binding of the native CPU kernels: every C function the Python side calls is declared
here (restype, argtypes), behind a function that takes torch tensors and checks them before C runs.

- Loading: `library()` builds and loads the kernels through build.py (NativeUnavailable, with the
  reason, without a C compiler or with MEDVLLM_DISABLE_NATIVE=1: callers keep their PyTorch path),
  declares every signature, and compares the structs of decode_layer.c and the constants this side
  relies on with what layout.c reports from the compiler's side. A mismatch raises NativeUnavailable
  naming the struct and field, before any kernel runs.
- Checks: the wrappers run per layer per step, so each is a few attribute comparisons: dtype, device
  (CPU), contiguity, and the shapes that must agree. Nothing is copied or converted here; callers hand
  over tensors already in the kernel's form. A tensor of the wrong kind raises TypeError, shapes that
  disagree raise ValueError, each in one line naming the argument.
- Structs: decode_layer's Weight, Layer and Step are built by decode_weight_int8 / decode_weight_f32 /
  decode_layer_params / decode_step from tensors. Each keeps the tensors it points into alive.
- The C library's memory calls (madvise, malloc_trim, mallopt) for engine/memory_pool.py need no
  compiler: they load apart from the kernels, NativeUnavailable where this C library lacks them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import torch

from medvllm.backends.cpu.native import build
from medvllm.backends.cpu.native.build import NativeUnavailable

_P, _I, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float

CACHE_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # CACHE_F32 / CACHE_BF16 in paged_attention.c
F32_PANEL_COLS = 48  # PANEL_COLS in f32_panels.c
INT8_PANEL = 16  # PANEL in int8_linear.c
GGUF_SEGMENTS = 3  # GGUF_SEGMENTS in decode_layer.c: runs of rows of one GGUF type in a merged projection


class Weight(ctypes.Structure):
    """decode_layer.c's Weight: one Linear, int8 panels or float32 panels."""

    _fields_ = [
        ("panels", _P),
        ("scale", _P),
        ("bias", _P),
        ("n_out", _I),
        ("k_padded", _I),
        ("f32_panels", _P),
        ("col_sums", _P),
        ("group", _I),
        ("gguf_blocks", _P * GGUF_SEGMENTS),
        ("gguf_type", _I * GGUF_SEGMENTS),
        ("gguf_rows", _I * GGUF_SEGMENTS),
        ("gguf_segments", _I),
        ("gguf_parts", _I),
    ]


class Layer(ctypes.Structure):
    """decode_layer.c's Layer: what one decoder layer holds."""

    _fields_ = [
        ("qkv", Weight),
        ("o", Weight),
        ("gate_up", Weight),
        ("down", Weight),
        ("input_norm", _P),
        ("post_norm", _P),
        ("k_cache", _P),
        ("v_cache", _P),
        ("hidden", _I),
        ("heads", _I),
        ("kv_heads", _I),
        ("head_dim", _I),
        ("intermediate", _I),
        ("block_size", _I),
        ("window", _I),
        ("cache_dtype", _I),
        ("q_norm", _P),
        ("k_norm", _P),
        ("pre_ff_norm", _P),
        ("post_ff_norm", _P),
        ("cos", _P),
        ("sin", _P),
        ("gemma", _I),
        ("window_pool", _I),
        ("eps", _F),
        ("scale", _F),
    ]


class Step(ctypes.Structure):
    """decode_layer.c's Step: what a step gives every layer."""

    _fields_ = [
        ("positions", _P),
        ("slots", _P),
        ("block_tables", _P),
        ("token_rows", _P),
        ("cos", _P),
        ("sin", _P),
        ("tokens", _I),
        ("max_blocks", _I),
        ("window_slots", _P),
        ("window_block_tables", _P),
        ("window_max_blocks", _I),
        ("threads", _INT),
    ]


STRUCTS = {"Weight": Weight, "Layer": Layer, "Step": Step}  # C name -> its declaration here
CONSTANTS = {
    "CACHE_F32": CACHE_DTYPES[torch.float32],
    "CACHE_BF16": CACHE_DTYPES[torch.bfloat16],
    "PANEL_COLS": F32_PANEL_COLS,
    "PANEL": INT8_PANEL,
    "GGUF_SEGMENTS": GGUF_SEGMENTS,
}

_SIGNATURES = {  # name: (restype, argtypes), as the C sources declare them
    "rms_norm": (None, [_P, _P, _P, _P, _P, _F, _I, _I, _INT]),
    "paged_attention": (_INT, [_P, _P, _P, _P, _INT, _P, _I, _P, _P, _I, _I, _I, _I, _I, _F, _I, _INT]),
    "decode_layer": (_INT, [ctypes.POINTER(Layer), ctypes.POINTER(Step), _P, _P, _INT, _P]),
    "decode_layer_work": (_I, [ctypes.POINTER(Layer)]),
    "f32_panels_size": (_I, [_I, _I]),
    "f32_panels_pack": (None, [_P, _P, _I, _I, _INT]),
    "f32_panels_linear": (None, [_P, _P, _P, _P, _I, _I, _I, _INT]),
    "int8_linear": (_INT, [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _INT]),
    "int8_rows_matmul": (_INT, [_P, _P, _P, _P, _I, _I, _I, _I, _INT]),
    "int8_rows_uses_amx": (_INT, [_I, _I]),
    "first_max": (None, [_P, _P, _I, _I, _INT]),
    "gguf_act_bytes": (_I, [_I, _I, _INT]),
    "gguf_quantize_act": (None, [_P, _P, _I, _I, _INT, _INT]),
    "gguf_matmul_q": (_INT, [_P, _I, _P, _I, _I, _P, _I, _INT, _INT, _INT]),
    "gguf_matmul_reference": (_INT, [_P, _I, _P, _I, _I, _P, _I, _INT, _INT, _INT]),
    "gguf_linear": (_INT, [_P, _I, _P, _I, _I, _P, _I, _INT, _INT, _INT]),
    "gguf_dequantize_rows": (None, [_P, _P, _I, _P, _I, _I, _INT, _INT]),
    "layout_entries": (_I, []),
    "layout_entry": (_I, [_I, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(_I)]),
}

_lib: ctypes.CDLL | None = None  # the library whose signatures are declared and layout checked


def library() -> ctypes.CDLL:
    """The kernels, built on first use, signatures declared, layout checked. Raises NativeUnavailable."""
    global _lib
    lib = build.load()  # asked every time: MEDVLLM_DISABLE_NATIVE and a cleared build cache take effect
    if lib is not _lib:
        try:
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
        except AttributeError as e:
            raise NativeUnavailable(f"the native library lacks a function: {e}") from None
        check_layouts(lib)
        _lib = lib
    return lib


def _loaded() -> ctypes.CDLL:
    return _lib if _lib is not None else library()


# --- the layout check -------------------------------------------------------------------------------


def c_layout(lib: ctypes.CDLL) -> dict[str, dict[str, tuple[int, int]]]:
    """What layout.c reports: {struct: {field: (offset, size)}, with "" for the whole struct: (size,
    size)}, and {"constants": {name: (value, 0)}}."""
    group, name, size = ctypes.c_char_p(), ctypes.c_char_p(), _I()
    layout: dict[str, dict[str, tuple[int, int]]] = {}
    for i in range(lib.layout_entries()):
        value = lib.layout_entry(i, ctypes.byref(group), ctypes.byref(name), ctypes.byref(size))
        layout.setdefault(group.value.decode(), {})[name.value.decode()] = (value, size.value)
    return layout


def check_layouts(lib: ctypes.CDLL, structs: dict = STRUCTS, constants: dict = CONSTANTS) -> None:
    """Compare each ctypes struct (its size, every field's offset and size) and each constant with the
    C side; raises NativeUnavailable naming the first struct and field that differ."""
    layout = c_layout(lib)
    for c_name, cls in structs.items():
        c = layout.get(c_name)
        if c is None:
            raise NativeUnavailable(f"struct {c_name}: layout.c does not report it")
        ours = {field[0]: (getattr(cls, field[0]).offset, getattr(cls, field[0]).size) for field in cls._fields_}
        for field in [*dict.fromkeys([*c, *ours])]:
            if field and c.get(field) != ours.get(field):
                raise NativeUnavailable(
                    f"struct {c_name}, field {field}: {_said(c.get(field))} in C, "
                    f"{_said(ours.get(field))} in {cls.__name__}: binding.py must match the "
                    "C struct"
                )
        if c.get("", (None,))[0] != ctypes.sizeof(cls):
            raise NativeUnavailable(
                f"struct {c_name}: size {c.get('', (None,))[0]} in C, {ctypes.sizeof(cls)} in "
                f"{cls.__name__}: binding.py must match the C struct"
            )
    reported = layout.get("constants", {})
    for name, value in constants.items():
        if reported.get(name, (None,))[0] != value:
            raise NativeUnavailable(
                f"constant {name}: {_said(reported.get(name), 'value')} in C, {value} in binding.py"
            )


def _said(entry: tuple[int, int] | None, what: str = "field") -> str:
    if entry is None:
        return "absent"
    return str(entry[0]) if what == "value" else f"offset {entry[0]} size {entry[1]}"


# --- argument checks: the fast path is a few comparisons, the messages are built only on failure ------


def _check(name: str, t, dtype: torch.dtype) -> None:
    try:
        if t.dtype is dtype and t.is_cpu and t.is_contiguous():
            return
    except AttributeError:
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}") from None
    if t.dtype is not dtype:
        raise TypeError(f"{name}: expected {dtype}, got {t.dtype}")
    if not t.is_cpu:
        raise TypeError(f"{name}: expected a CPU tensor, got one on {t.device}")
    raise TypeError(f"{name}: expected a contiguous tensor, got strides {tuple(t.stride())} for shape {tuple(t.shape)}")


def _shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if t.shape != shape:
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _dims(name: str, t: torch.Tensor, dims: int) -> None:
    if t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dimensions, got shape {tuple(t.shape)}")


def _optional(name: str, t, dtype: torch.dtype, shape: tuple):
    """None, or the pointer of a checked tensor."""
    if t is None:
        return None
    _check(name, t, dtype)
    _shape(name, t, shape)
    return t.data_ptr()


def _cache_code(name: str, t) -> int:
    code = CACHE_DTYPES.get(getattr(t, "dtype", None))
    if code is None:
        raise TypeError(
            f"{name}: expected torch.float32 or torch.bfloat16, got {getattr(t, 'dtype', type(t).__name__)}"
        )
    return code


def _caches(k_cache, v_cache, kv_heads: int | None, head_dim: int) -> int:
    """Check the paged caches [num_blocks, block_size, kv_heads, head_dim] (kv_heads None: any); returns
    the cache dtype's code."""
    code = _cache_code("k_cache", k_cache)
    _check("k_cache", k_cache, k_cache.dtype)
    _check("v_cache", v_cache, k_cache.dtype)
    _dims("k_cache", k_cache, 4)
    if k_cache.shape[2] != (k_cache.shape[2] if kv_heads is None else kv_heads) or k_cache.shape[3] != head_dim:
        raise ValueError(
            f"k_cache: expected [num_blocks, block_size, {kv_heads or 'kv_heads'}, {head_dim}], "
            f"got {tuple(k_cache.shape)}"
        )
    _shape("v_cache", v_cache, k_cache.shape)
    return code


def _panels_size(n_out: int, n_in: int) -> int:
    return -(-n_out // F32_PANEL_COLS) * F32_PANEL_COLS * n_in  # f32_panels_size, without a call into C


# --- the kernels ------------------------------------------------------------------------------------


def rms_norm(
    out: torch.Tensor,
    residual_out: torch.Tensor | None,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    threads: int,
) -> None:
    """fused_norm.c: out = norm(x) * weight over x's last dimension; with residual, residual_out =
    x + residual and out = norm(residual_out) * weight. All float32, x's shape (weight [last dim])."""
    _check("x", x, torch.float32)
    if x.dim() == 0:
        raise ValueError("x: expected at least one dimension, got a scalar")
    _check("out", out, torch.float32)
    _shape("out", out, x.shape)
    width = x.shape[-1]
    _check("weight", weight, torch.float32)
    _shape("weight", weight, (width,))
    if (residual is None) != (residual_out is None):
        raise ValueError("residual_out: given without residual, or residual without it: both or neither")
    r = _optional("residual", residual, torch.float32, x.shape)
    r_out = _optional("residual_out", residual_out, torch.float32, x.shape)
    _loaded().rms_norm(
        out.data_ptr(),
        r_out,
        x.data_ptr(),
        r,
        weight.data_ptr(),
        eps,
        x.numel() // width if width else 0,
        width,
        threads,
    )


def paged_attention(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    token_positions: torch.Tensor,
    scale: float,
    window: int,
    threads: int,
) -> int:
    """paged_attention.c: q, out float32 [T, H, D]; caches [num_blocks, block_size, Hkv, D] float32 or
    bfloat16; block_tables int64 [rows, max_blocks]; token_rows, token_positions int64 [T]; window <= 0:
    none. Returns 0, or nonzero when the kernel's scratch memory could not be had."""
    _check("q", q, torch.float32)
    _dims("q", q, 3)
    _check("out", out, torch.float32)
    _shape("out", out, q.shape)
    tokens, heads, head_dim = q.shape
    code = _caches(k_cache, v_cache, None, head_dim)
    kv_heads = k_cache.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"q: {heads} heads is not a multiple of the caches' {kv_heads} KV heads")
    _check("block_tables", block_tables, torch.int64)
    _dims("block_tables", block_tables, 2)
    _check("token_rows", token_rows, torch.int64)
    _shape("token_rows", token_rows, (tokens,))
    _check("token_positions", token_positions, torch.int64)
    _shape("token_positions", token_positions, (tokens,))
    return _loaded().paged_attention(
        out.data_ptr(),
        q.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        code,
        block_tables.data_ptr(),
        block_tables.shape[1],
        token_rows.data_ptr(),
        token_positions.data_ptr(),
        tokens,
        heads,
        kv_heads,
        head_dim,
        k_cache.shape[1],
        scale,
        window,
        threads,
    )


def f32_panels_size(n_out: int, n_in: int) -> int:
    """f32_panels.c: floats the packed form of an [n_out, n_in] weight takes."""
    return _loaded().f32_panels_size(n_out, n_in)


def f32_panels_pack(panels: torch.Tensor, weight: torch.Tensor, threads: int) -> None:
    """f32_panels.c: weight float32 [n_out, n_in] -> panels, float32 of f32_panels_size(n_out, n_in)."""
    _check("weight", weight, torch.float32)
    _dims("weight", weight, 2)
    _check("panels", panels, torch.float32)
    n_out, n_in = weight.shape
    if panels.numel() != _panels_size(n_out, n_in):
        raise ValueError(
            f"panels: expected {_panels_size(n_out, n_in)} floats for a [{n_out}, {n_in}] weight, got {panels.numel()}"
        )
    _loaded().f32_panels_pack(panels.data_ptr(), weight.data_ptr(), n_out, n_in, threads)


def f32_panels_linear(
    out: torch.Tensor, x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, threads: int
) -> None:
    """f32_panels.c: out [M, N] = x [M, K] @ weight.T + bias, the weight's panels from f32_panels_pack;
    bias float32 [N] or None. All float32."""
    _check("x", x, torch.float32)
    _dims("x", x, 2)
    _check("out", out, torch.float32)
    _dims("out", out, 2)
    rows, n_in = x.shape
    n_out = out.shape[1]
    if out.shape[0] != rows:
        raise ValueError(f"out: expected {rows} rows (x's), got shape {tuple(out.shape)}")
    _check("panels", panels, torch.float32)
    if panels.numel() != _panels_size(n_out, n_in):
        raise ValueError(
            f"panels: expected {_panels_size(n_out, n_in)} floats for a [{n_out}, {n_in}] weight, got {panels.numel()}"
        )
    b = _optional("bias", bias, torch.float32, (n_out,))
    _loaded().f32_panels_linear(out.data_ptr(), x.data_ptr(), panels.data_ptr(), b, rows, n_in, n_out, threads)


def _int8_panels(packed: torch.Tensor, n_out: int, n_in: int | None) -> int:
    """Check int8 panels [ceil(n_out/16), ceil(n_in/4), 16, 4]; returns the padded input width."""
    _check("packed", packed, torch.int8)
    _dims("packed", packed, 4)
    if packed.shape[2:] != (INT8_PANEL, 4) or packed.shape[0] != -(-n_out // INT8_PANEL):
        raise ValueError(
            f"packed: expected [{-(-n_out // INT8_PANEL)}, in/4, {INT8_PANEL}, 4] for {n_out} outputs, "
            f"got {tuple(packed.shape)}"
        )
    if n_in is not None and packed.shape[1] != -(-n_in // 4):
        raise ValueError(f"packed: {packed.shape[1] * 4} padded inputs, but x has {n_in}")
    return packed.shape[1] * 4


def _int8_groups(packed: torch.Tensor, scale: torch.Tensor, col_sums: torch.Tensor, group: int) -> None:
    """Check the per-group scales and column sums beside int8 panels: [panels, groups, 16] each."""
    if not 0 < group <= 256 or group % 4:  # 256: the column sums are int16
        raise ValueError(f"group: {group} inputs per scale; use a multiple of 4 from 4 to 256")
    shape = (packed.shape[0], -(-packed.shape[1] * 4 // group), INT8_PANEL)
    _check("scale", scale, torch.float32)
    _shape("scale", scale, shape)
    _check("col_sums", col_sums, torch.int16)
    _shape("col_sums", col_sums, shape)


def int8_linear(
    out: torch.Tensor,
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    col_sums: torch.Tensor,
    bias: torch.Tensor | None,
    group: int,
    threads: int,
) -> int:
    """int8_linear.c: out float32 [M, N] from x float32 [M, K], packed int8 panels, in groups of `group`
    inputs: scale float32 and col_sums int16 [panels, groups, 16]; bias float32 [N] or None. Returns 0, or
    nonzero when the kernel's scratch memory could not be had."""
    _check("x", x, torch.float32)
    _dims("x", x, 2)
    _check("out", out, torch.float32)
    _dims("out", out, 2)
    rows, n_in = x.shape
    n_out = out.shape[1]
    k_padded = _int8_panels(packed, n_out, n_in)
    _int8_groups(packed, scale, col_sums, group)
    _shape("out", out, (rows, n_out))
    b = _optional("bias", bias, torch.float32, (n_out,))
    return _loaded().int8_linear(
        out.data_ptr(),
        x.data_ptr(),
        packed.data_ptr(),
        scale.data_ptr(),
        col_sums.data_ptr(),
        b,
        rows,
        n_in,
        n_out,
        k_padded,
        group,
        threads,
    )


def int8_rows_matmul(
    out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, group: int, threads: int
) -> int:
    """int8_rows_matmul.c: out float32 [M, N] from x float32 [M, K], rows int8 [N, K], scale float32
    [N, ceil(K / group)] (group a multiple of 16, or >= K: one scale per row). Returns 0, or nonzero when
    memory ran out."""
    _check("x", x, torch.float32)
    _dims("x", x, 2)
    _check("rows", rows, torch.int8)
    _dims("rows", rows, 2)
    tokens, width = x.shape
    n = rows.shape[0]
    if rows.shape[1] != width:
        raise ValueError(f"rows: expected {width} columns (x's), got shape {tuple(rows.shape)}")
    if group <= 0 or (group < width and group % 16):
        raise ValueError(f"group: {group} inputs per scale; use a positive multiple of 16 (or the row width)")
    _check("scale", scale, torch.float32)
    _shape("scale", scale, (n, -(-width // group)))
    _check("out", out, torch.float32)
    _shape("out", out, (tokens, n))
    return _loaded().int8_rows_matmul(
        out.data_ptr(), x.data_ptr(), rows.data_ptr(), scale.data_ptr(), tokens, width, n, group, threads
    )


def int8_rows_uses_amx(width: int, group: int) -> bool:
    """int8_rows_matmul.c: whether rows of this width and scale group take the AMX path."""
    return bool(_loaded().int8_rows_uses_amx(width, group))


def first_max(out: torch.Tensor, x: torch.Tensor, threads: int) -> None:
    """first_max.c: out int64 [rows] = the index of each row's first largest value, x float32 [rows, n]."""
    _check("x", x, torch.float32)
    _dims("x", x, 2)
    _check("out", out, torch.int64)
    _shape("out", out, (x.shape[0],))
    _loaded().first_max(out.data_ptr(), x.data_ptr(), x.shape[0], x.shape[1], threads)


# --- GGUF blocks (gguf_*.c): matmul on a GGUF file's quantized blocks as they are -------------------

# ggml type id: (inputs per block, bytes per block), as gguf.GGML_QUANT_SIZES; the types gguf_blocks.c takes
GGUF_BLOCKS = {
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
}


def gguf_row_bytes(qtype: int, n_in: int) -> int:
    """Bytes of one row of n_in weights of a GGUF type; ValueError for a type the kernels do not take or a
    width off its block."""
    if qtype not in GGUF_BLOCKS:
        raise ValueError(
            f"qtype: GGML type {qtype} is not one the GGUF kernels take (use one of {sorted(GGUF_BLOCKS)})"
        )
    block, size = GGUF_BLOCKS[qtype]
    if n_in <= 0 or n_in % block:
        raise ValueError(f"K: {n_in} inputs is not a multiple of GGML type {qtype}'s {block}-input block")
    return n_in // block * size


def _gguf_parts(parts: int) -> None:
    if parts not in (1, 2):
        raise ValueError(f"parts: expected 1 or 2 int8 parts per activation, got {parts}")


def _gguf_weight(blocks: torch.Tensor, qtype: int, n_in: int) -> None:
    _check("blocks", blocks, torch.uint8)
    _dims("blocks", blocks, 2)
    row_bytes = gguf_row_bytes(qtype, n_in)
    if blocks.shape[1] != row_bytes:
        raise ValueError(
            f"blocks: rows of {blocks.shape[1]} bytes, but {n_in} inputs of GGML type {qtype} take {row_bytes}"
        )


def gguf_act_bytes(rows: int, n_in: int, parts: int) -> int:
    """gguf_act.c: bytes of the quantized activations of rows x n_in inputs."""
    _gguf_parts(parts)
    return _loaded().gguf_act_bytes(rows, n_in, parts)


def gguf_quantize_act(qx: torch.Tensor, x: torch.Tensor, parts: int, threads: int) -> None:
    """gguf_act.c: x float32 [M, K] (K a multiple of 32) -> qx, uint8 of gguf_act_bytes(M, K, parts)."""
    _check("x", x, torch.float32)
    _dims("x", x, 2)
    rows, n_in = x.shape
    if n_in % 32:
        raise ValueError(f"x: {n_in} inputs is not a multiple of 32 (the activation block)")
    _check("qx", qx, torch.uint8)
    if qx.numel() != gguf_act_bytes(rows, n_in, parts):
        raise ValueError(
            f"qx: {qx.numel()} bytes, {rows} x {n_in} activations take {gguf_act_bytes(rows, n_in, parts)}"
        )
    _loaded().gguf_quantize_act(qx.data_ptr(), x.data_ptr(), rows, n_in, parts, threads)


def _gguf_out(out: torch.Tensor, rows: int, col: int, n_out: int) -> int:
    """Check out float32 [rows, ldo] with room for columns col .. col + n_out; returns its first element's address."""
    _check("out", out, torch.float32)
    _dims("out", out, 2)
    if out.shape[0] != rows or col < 0 or col + n_out > out.shape[1]:
        raise ValueError(f"out: shape {tuple(out.shape)} has no room for {rows} rows x columns {col}..{col + n_out}")
    return out.data_ptr() + 4 * col


def gguf_matmul_q(
    out: torch.Tensor,
    col: int,
    qx: torch.Tensor,
    rows: int,
    n_in: int,
    blocks: torch.Tensor,
    qtype: int,
    parts: int,
    threads: int,
    reference: bool = False,
) -> int:
    """gguf_matmul.c: out[:, col:col + N] = x @ W.T, x given as qx (gguf_quantize_act of rows x n_in, same
    parts) and W as blocks uint8 [N, row bytes] of GGML type qtype. reference: the portable path, one pair
    at a time (the tests hold the SIMD paths to it). Returns 0, or nonzero when memory ran out."""
    _gguf_weight(blocks, qtype, n_in)
    _check("qx", qx, torch.uint8)
    if qx.numel() != gguf_act_bytes(rows, n_in, parts):
        raise ValueError(
            f"qx: {qx.numel()} bytes, {rows} x {n_in} activations take {gguf_act_bytes(rows, n_in, parts)}"
        )
    o = _gguf_out(out, rows, col, blocks.shape[0])
    fn = _loaded().gguf_matmul_reference if reference else _loaded().gguf_matmul_q
    return fn(o, out.shape[1], qx.data_ptr(), rows, n_in, blocks.data_ptr(), blocks.shape[0], qtype, parts, threads)


def gguf_linear(
    out: torch.Tensor, col: int, x: torch.Tensor, blocks: torch.Tensor, qtype: int, parts: int, threads: int
) -> int:
    """gguf_matmul.c: quantize x float32 [M, K] and out[:, col:col + N] = x @ W.T in one call; W as in
    gguf_matmul_q. Returns 0, or nonzero when memory ran out."""
    _check("x", x, torch.float32)
    _dims("x", x, 2)
    rows, n_in = x.shape
    _gguf_parts(parts)
    _gguf_weight(blocks, qtype, n_in)
    o = _gguf_out(out, rows, col, blocks.shape[0])
    return _loaded().gguf_linear(
        o, out.shape[1], x.data_ptr(), rows, n_in, blocks.data_ptr(), blocks.shape[0], qtype, parts, threads
    )


def gguf_dequantize_rows(
    out: torch.Tensor, blocks: torch.Tensor, qtype: int, n_in: int, rows: torch.Tensor, threads: int
) -> None:
    """gguf_dequant.c: out float32 [len(rows), n_in] = rows of the weight (blocks uint8 [N, row bytes]),
    bit-identical to gguf.quants.dequantize; rows int64, each in [0, N)."""
    _gguf_weight(blocks, qtype, n_in)
    _check("rows", rows, torch.int64)
    _dims("rows", rows, 1)
    _check("out", out, torch.float32)
    _shape("out", out, (rows.shape[0], n_in))
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= blocks.shape[0]):
        raise ValueError(f"rows: ids must lie in [0, {blocks.shape[0]}), got {int(rows.min())}..{int(rows.max())}")
    _loaded().gguf_dequantize_rows(
        out.data_ptr(), blocks.data_ptr(), blocks.shape[1], rows.data_ptr(), rows.shape[0], n_in, qtype, threads
    )


# --- the fused decoder layer ------------------------------------------------------------------------


def decode_weight_int8(
    panels: torch.Tensor,
    scale: torch.Tensor,
    col_sums: torch.Tensor,
    group: int,
    n_out: int,
    bias: torch.Tensor | None,
) -> Weight:
    """A Weight on int8 panels (int8_linear's layout) of n_out columns, in groups of `group` inputs: scale
    float32 and col_sums int16 [panels, groups, 16]; bias float32 [n_out] or None."""
    k_padded = _int8_panels(panels, n_out, None)
    _int8_groups(panels, scale, col_sums, group)
    b = _optional("bias", bias, torch.float32, (n_out,))
    w = Weight(panels.data_ptr(), scale.data_ptr(), b, n_out, k_padded, None, col_sums.data_ptr(), group)
    w._tensors = (panels, scale, bias, col_sums)
    return w


def decode_weight_f32(panels: torch.Tensor, bias: torch.Tensor | None, n_out: int, n_in: int) -> Weight:
    """A Weight on float32 panels (f32_panels_pack's layout) of an [n_out, n_in] weight; bias float32
    [n_out] or None."""
    _check("panels", panels, torch.float32)
    if panels.numel() != _panels_size(n_out, n_in):
        raise ValueError(
            f"panels: expected {_panels_size(n_out, n_in)} floats for a [{n_out}, {n_in}] weight, got {panels.numel()}"
        )
    b = _optional("bias", bias, torch.float32, (n_out,))
    w = Weight(None, None, b, n_out, n_in, panels.data_ptr(), None, 0)
    w._tensors = (panels, bias)
    return w


def decode_weight_gguf(
    segments: list[tuple[torch.Tensor, int]], parts: int, bias: torch.Tensor | None, n_in: int
) -> Weight:
    """A Weight on GGUF blocks: segments of (uint8 blocks [rows, row bytes], ggml type id) whose rows follow
    each other in the output (at most GGUF_SEGMENTS), activations in `parts` int8 parts; bias float32 or None."""
    if not 0 < len(segments) <= GGUF_SEGMENTS:
        raise ValueError(f"segments: expected 1 to {GGUF_SEGMENTS}, got {len(segments)}")
    if parts not in (1, 2):
        raise ValueError(f"parts: expected 1 or 2, got {parts}")
    for blocks, qtype in segments:
        _check("blocks", blocks, torch.uint8)
        _dims("blocks", blocks, 2)
        _shape("blocks", blocks, (blocks.shape[0], gguf_row_bytes(qtype, n_in)))
    n_out = sum(blocks.shape[0] for blocks, _ in segments)
    b = _optional("bias", bias, torch.float32, (n_out,))
    pad = GGUF_SEGMENTS - len(segments)
    w = Weight(None, None, b, n_out, n_in, None, None)
    w.gguf_blocks = (_P * GGUF_SEGMENTS)(*[blocks.data_ptr() for blocks, _ in segments], *[None] * pad)
    w.gguf_type = (_I * GGUF_SEGMENTS)(*[int(qtype) for _, qtype in segments], *[0] * pad)
    w.gguf_rows = (_I * GGUF_SEGMENTS)(*[blocks.shape[0] for blocks, _ in segments], *[0] * pad)
    w.gguf_segments, w.gguf_parts = len(segments), parts
    w._tensors = (*[blocks for blocks, _ in segments], bias)
    return w


def decode_layer_params(
    qkv: Weight,
    o: Weight,
    gate_up: Weight,
    down: Weight,
    input_norm: torch.Tensor,
    post_norm: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    heads: int,
    kv_heads: int,
    head_dim: int,
    intermediate: int,
    window: int,
    eps: float,
    scale: float,
    gemma: dict | None = None,
) -> Layer:
    """A Layer: its four Weights, norm weights float32 [hidden], the layer's paged caches; window <= 0:
    none. The Weights' widths must be the layer's (qkv: hidden -> (heads + 2 kv_heads) * head_dim, ...).
    `gemma`: Gemma's layer, given q_norm and k_norm [head_dim], pre_ff_norm and post_ff_norm [hidden] (each
    1 + w), its rotary tables cos and sin [max_positions, head_dim], and window_pool (bool: its KV is in the
    sliding-window pool)."""
    _check("input_norm", input_norm, torch.float32)
    _dims("input_norm", input_norm, 1)
    hidden = input_norm.shape[0]
    _check("post_norm", post_norm, torch.float32)
    _shape("post_norm", post_norm, (hidden,))
    code = _caches(k_cache, v_cache, kv_heads, head_dim)
    if kv_heads <= 0 or heads % kv_heads:
        raise ValueError(f"heads: {heads} is not a multiple of kv_heads {kv_heads}")
    q_width = heads * head_dim
    for name, w, n_in, n_out in (
        ("qkv", qkv, hidden, q_width + 2 * kv_heads * head_dim),
        ("o", o, q_width, hidden),
        ("gate_up", gate_up, hidden, 2 * intermediate),
        ("down", down, intermediate, hidden),
    ):
        if not isinstance(w, Weight):
            raise TypeError(f"{name}: expected a binding.Weight, got {type(w).__name__}")
        k_padded = n_in if w.f32_panels or w.gguf_segments else -(-n_in // 4) * 4
        if w.n_out != n_out or w.k_padded != k_padded:
            raise ValueError(
                f"{name}: expected a [{n_out}, {n_in}] weight, got {w.n_out} outputs of {w.k_padded} (padded) inputs"
            )
    layer = Layer(
        qkv,
        o,
        gate_up,
        down,
        input_norm.data_ptr(),
        post_norm.data_ptr(),
        k_cache.data_ptr(),
        v_cache.data_ptr(),
        hidden,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        k_cache.shape[1],
        window,
        code,
        eps=eps,
        scale=scale,
    )
    layer._tensors = (qkv, o, gate_up, down, input_norm, post_norm, k_cache, v_cache)
    if gemma is not None:
        _gemma_fields(layer, gemma, hidden, head_dim)
    layer._work_per_token = _loaded().decode_layer_work(ctypes.byref(layer))  # for decode_layer's check of work
    return layer


def _gemma_fields(layer: Layer, gemma: dict, hidden: int, head_dim: int) -> None:
    for name, width in (("q_norm", head_dim), ("k_norm", head_dim), ("pre_ff_norm", hidden), ("post_ff_norm", hidden)):
        _check(name, gemma[name], torch.float32)
        _shape(name, gemma[name], (width,))
        setattr(layer, name, gemma[name].data_ptr())
    for name in ("cos", "sin"):
        _check(name, gemma[name], torch.float32)
        _dims(name, gemma[name], 2)
        if gemma[name].shape[1] != head_dim or not gemma[name].is_contiguous():
            raise ValueError(f"{name}: expected contiguous [max_positions, {head_dim}], got {tuple(gemma[name].shape)}")
        setattr(layer, name, gemma[name].data_ptr())
    layer.gemma, layer.window_pool = 1, int(bool(gemma["window_pool"]))
    layer._tensors += tuple(gemma[k] for k in ("q_norm", "k_norm", "pre_ff_norm", "post_ff_norm", "cos", "sin"))


def decode_step(
    positions: torch.Tensor,
    slots: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    threads: int,
    window: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Step:
    """A Step: positions, slots, token_rows int64 [T]; block_tables int64 [rows, max_blocks]; the rotary
    tables cos, sin float32 [max_positions, head_dim]; `window`: the sliding-window pool's slots [T] and
    block tables [rows, max_blocks], where the model has one."""
    _check("positions", positions, torch.int64)
    _dims("positions", positions, 1)
    tokens = positions.shape[0]
    _check("slots", slots, torch.int64)
    _shape("slots", slots, (tokens,))
    _check("token_rows", token_rows, torch.int64)
    _shape("token_rows", token_rows, (tokens,))
    _check("block_tables", block_tables, torch.int64)
    _dims("block_tables", block_tables, 2)
    _check("cos", cos, torch.float32)
    _dims("cos", cos, 2)
    _check("sin", sin, torch.float32)
    _shape("sin", sin, cos.shape)
    step = Step(
        positions.data_ptr(),
        slots.data_ptr(),
        block_tables.data_ptr(),
        token_rows.data_ptr(),
        cos.data_ptr(),
        sin.data_ptr(),
        tokens,
        block_tables.shape[1],
        threads=threads,
    )
    step._tensors = (positions, slots, block_tables, token_rows, cos, sin)
    step._rotary_width = cos.shape[1]
    if window is not None:
        window_slots, window_tables = window
        _check("window_slots", window_slots, torch.int64)
        _shape("window_slots", window_slots, (tokens,))
        _check("window_block_tables", window_tables, torch.int64)
        _shape("window_block_tables", window_tables, tuple(block_tables.shape))
        step.window_slots, step.window_block_tables = window_slots.data_ptr(), window_tables.data_ptr()
        step.window_max_blocks = window_tables.shape[1]
        step._tensors += (window_slots, window_tables)
    return step


def decode_layer_work(layer: Layer) -> int:
    """decode_layer.c: floats of work memory a decode_layer call needs per token."""
    if not isinstance(layer, Layer):
        raise TypeError(f"layer: expected a binding.Layer, got {type(layer).__name__}")
    return _loaded().decode_layer_work(ctypes.byref(layer))


def decode_layer(
    layer: Layer, step: Step, hidden: torch.Tensor, residual: torch.Tensor, first: bool, work: torch.Tensor | None
) -> int:
    """decode_layer.c: one decoder layer over the step's tokens. hidden, residual float32 [T, hidden]
    (updated in place); first: the first layer (residual is then set from hidden); work float32 of at
    least T * decode_layer_work(layer), or None to have the kernel allocate it. Returns 0, or nonzero
    when memory ran out."""
    if type(layer) is not Layer or not hasattr(layer, "_work_per_token"):
        raise TypeError(f"layer: expected a binding.Layer from decode_layer_params, got {type(layer).__name__}")
    if type(step) is not Step or not hasattr(step, "_rotary_width"):
        raise TypeError(f"step: expected a binding.Step from decode_step, got {type(step).__name__}")
    if step._rotary_width != layer.head_dim:
        raise ValueError(
            f"step: rotary tables of width {step._rotary_width}, but the layer's head_dim is {layer.head_dim}"
        )
    if layer.window_pool and not step.window_slots:
        raise ValueError("step: the layer keeps its KV in the sliding-window pool, but the step has no window tables")
    shape = (step.tokens, layer.hidden)
    _check("hidden", hidden, torch.float32)
    _shape("hidden", hidden, shape)
    _check("residual", residual, torch.float32)
    _shape("residual", residual, shape)
    w = None
    if work is not None:
        _check("work", work, torch.float32)
        if work.numel() < step.tokens * layer._work_per_token:
            raise ValueError(f"work: {work.numel()} floats, the step needs {step.tokens * layer._work_per_token}")
        w = work.data_ptr()
    return _loaded().decode_layer(
        ctypes.byref(layer), ctypes.byref(step), hidden.data_ptr(), residual.data_ptr(), int(first), w
    )


# --- the C library's memory calls -------------------------------------------------------------------

_LIBC_SIGNATURES = {
    "madvise": (_INT, [_P, ctypes.c_size_t, _INT]),
    "malloc_trim": (_INT, [ctypes.c_size_t]),
    "mallopt": (_INT, [_INT, _INT]),
}


@cache
def _libc_function(name: str):
    """One function of the C library, declared; the library is looked up once (find_library runs
    `ldconfig -p` in a subprocess at every call). Raises NativeUnavailable where it is missing."""
    try:
        fn = getattr(_libc(), name)
    except (OSError, AttributeError, TypeError) as e:
        raise NativeUnavailable(f"the C library has no {name}: {e}") from None
    fn.restype, fn.argtypes = _LIBC_SIGNATURES[name]
    return fn


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def madvise(tensor: torch.Tensor, offset: int, length: int, advice: int) -> int:
    """madvise(2) on `length` bytes of a CPU tensor's memory from `offset` bytes in; returns its result
    (0 when the kernel took the advice). Raises NativeUnavailable without the C library's madvise."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_cpu or not tensor.is_contiguous():
        raise TypeError("tensor: expected a contiguous CPU tensor")
    if offset < 0 or length < 0 or offset + length > tensor.numel() * tensor.element_size():
        raise ValueError(
            f"offset, length: bytes {offset}..{offset + length} lie outside the tensor's "
            f"{tensor.numel() * tensor.element_size()}"
        )
    return _libc_function("madvise")(tensor.data_ptr() + offset, length, advice)


def malloc_trim(pad: int) -> int:
    """glibc's malloc_trim: hand free heap memory back to the OS. Raises NativeUnavailable off glibc."""
    return _libc_function("malloc_trim")(pad)


def mallopt(param: int, value: int) -> int:
    """glibc's mallopt; returns 1 on success. Raises NativeUnavailable off glibc."""
    return _libc_function("mallopt")(param, value)
