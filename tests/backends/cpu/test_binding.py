"""The typed binding of the native kernels (backends/cpu/native/binding.py): a wrong argument is refused
in one line naming it, before anything runs in C, and the ctypes structs match the C structs."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from medvllm.backends.cpu.native import binding
from medvllm.backends.cpu.native.build import NativeUnavailable


@pytest.fixture(scope="module")
def lib():
    try:
        return binding.library()
    except NativeUnavailable as e:
        pytest.skip(f"native kernels unavailable: {e}")


# --- the struct layout ------------------------------------------------------------------------------


def test_structs_match_the_c_side(lib):
    binding.check_layouts(lib)  # library() ran it too; here it must simply pass
    layout = binding.c_layout(lib)
    for name, cls in binding.STRUCTS.items():
        assert layout[name][""] == (ctypes.sizeof(cls), ctypes.sizeof(cls))
        assert set(layout[name]) - {""} == {field for field, _ in cls._fields_}
    assert layout["constants"]["PANEL_COLS"] == (binding.F32_PANEL_COLS, 0)


class _StepWithSwappedCounts(ctypes.Structure):  # max_blocks before tokens: same size, fields crossed
    _fields_ = [
        ("positions", ctypes.c_void_p),
        ("slots", ctypes.c_void_p),
        ("block_tables", ctypes.c_void_p),
        ("token_rows", ctypes.c_void_p),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("max_blocks", ctypes.c_int64),
        ("tokens", ctypes.c_int64),
        ("threads", ctypes.c_int),
    ]


class _StepWithNarrowTokens(ctypes.Structure):  # tokens 32-bit: the padding hides it from every offset
    _fields_ = [(name, ctypes.c_int32 if name == "tokens" else kind) for name, kind in binding.Step._fields_]


class _WeightWithoutColSums(ctypes.Structure):
    _fields_ = [(name, kind) for name, kind in binding.Weight._fields_ if name != "col_sums"]


class _LayerWithWideScale(ctypes.Structure):  # the last field too wide, every offset right
    _fields_ = [*binding.Layer._fields_[:-1], ("scale", ctypes.c_float * 2)]


class _StepPacked(ctypes.Structure):  # no tail padding: every field right, only the struct's size tells
    _pack_ = 4
    _fields_ = binding.Step._fields_


@pytest.mark.parametrize(
    "name, cls, message",
    [
        ("Step", _StepWithSwappedCounts, "struct Step, field tokens: offset 48 size 8 in C, offset 56 size 8 in _Step"),
        ("Step", _StepWithNarrowTokens, "struct Step, field tokens: offset 48 size 8 in C, offset 48 size 4 in _Step"),
        ("Weight", _WeightWithoutColSums, "struct Weight, field col_sums: offset 48 size 8 in C, absent in _Weight"),
        (
            "Layer",
            _LayerWithWideScale,
            f"struct Layer, field scale: offset {binding.Layer.scale.offset} size 4 in C, "
            f"offset {binding.Layer.scale.offset} size 8 in _Layer",
        ),
        (
            "Step",
            _StepPacked,
            f"struct Step: size {ctypes.sizeof(binding.Step)} in C, {ctypes.sizeof(binding.Step) - 4} in _StepPacked",
        ),
    ],
)
def test_a_struct_declared_wrongly_is_caught(lib, name, cls, message):
    with pytest.raises(NativeUnavailable, match=message):
        binding.check_layouts(lib, {name: cls}, {})


def test_a_constant_that_differs_is_caught(lib):
    with pytest.raises(NativeUnavailable, match="constant PANEL_COLS: 48 in C, 32 in binding.py"):
        binding.check_layouts(lib, {}, {"PANEL_COLS": 32})


def test_disabled_native_code_is_unavailable_with_the_reason(monkeypatch):
    monkeypatch.setenv("MEDVLLM_DISABLE_NATIVE", "1")
    with pytest.raises(NativeUnavailable, match="MEDVLLM_DISABLE_NATIVE=1"):
        binding.library()


def test_no_other_module_declares_c_functions():
    package = Path(binding.__file__).parents[3]
    native = Path(binding.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if native not in path.parents and ("import ctypes" in (text := path.read_text()) or "argtypes" in text)
    ]
    assert offenders == []


# --- the argument checks: nothing reaches C ----------------------------------------------------------


class _RecordingLibrary:
    """Stands in for the loaded library: records each call instead of running it (decode_layer_work
    answers 100 floats a token, the rest 0)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append(name)
            return 100 if name == "decode_layer_work" else 0

        return call


@pytest.fixture
def fake(monkeypatch):
    recording = _RecordingLibrary()
    monkeypatch.setattr(binding, "_lib", recording)
    return recording


def _f(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


def _i(*shape):
    return torch.zeros(*shape, dtype=torch.int64)


def _call(fn, change: dict, **args):
    """fn with good arguments, `change` replacing some: called later, inside the test."""
    return lambda: fn(**{**args, **change})


def _attention(**change):
    return _call(
        binding.paged_attention,
        change,
        out=_f(3, 4, 8),
        q=_f(3, 4, 8),
        k_cache=_f(5, 16, 2, 8),
        v_cache=_f(5, 16, 2, 8),
        block_tables=_i(2, 5),
        token_rows=_i(3),
        token_positions=_i(3),
        scale=0.3,
        window=0,
        threads=1,
    )


def _norm(**change):
    return _call(
        binding.rms_norm,
        change,
        out=_f(3, 8),
        residual_out=None,
        x=_f(3, 8),
        residual=None,
        weight=_f(8),
        eps=1e-6,
        threads=1,
    )


def _panels(**change):
    return _call(
        binding.f32_panels_linear,
        change,
        out=_f(2, 50),
        x=_f(2, 7),
        panels=_f(binding._panels_size(50, 7)),
        bias=None,
        threads=1,
    )


def _int8(**change):
    return _call(
        binding.int8_linear,
        change,
        out=_f(2, 20),
        x=_f(2, 10),
        packed=_f(2, 3, 16, 4, dtype=torch.int8),
        scale=_f(2, 2, 16),  # 12 padded inputs in groups of 8: two groups
        col_sums=_f(2, 2, 16, dtype=torch.int16),
        bias=None,
        group=8,
        threads=1,
    )


def _rows(**change):
    return _call(
        binding.int8_rows_matmul,
        change,
        out=_f(2, 5),
        x=_f(2, 10),
        rows=_f(5, 10, dtype=torch.int8),
        scale=_f(5, 1),
        group=10,
        threads=1,
    )


def _step(**change):
    return _call(
        binding.decode_step,
        change,
        positions=_i(3),
        slots=_i(3),
        block_tables=_i(2, 4),
        token_rows=_i(3),
        cos=_f(64, 8),
        sin=_f(64, 8),
        threads=1,
    )


def _layer(**change):
    def weight(n_out, n_in):
        return binding.decode_weight_f32(_f(binding._panels_size(n_out, n_in)), None, n_out, n_in)

    return _call(
        binding.decode_layer_params,
        change,
        qkv=weight(64, 32),
        o=weight(32, 32),
        gate_up=weight(96, 32),
        down=weight(32, 48),
        input_norm=_f(32),
        post_norm=_f(32),
        k_cache=_f(5, 16, 2, 8),
        v_cache=_f(5, 16, 2, 8),
        heads=4,
        kv_heads=2,
        head_dim=8,
        intermediate=48,
        window=0,
        eps=1e-6,
        scale=0.3,
    )


def _first_max(**change):
    return _call(binding.first_max, change, out=_i(3), x=_f(3, 10), threads=1)


GOOD = {
    "paged_attention": _attention(),
    "rms_norm": _norm(),
    "rms_norm(residual)": _norm(residual=_f(3, 8), residual_out=_f(3, 8)),
    "f32_panels_linear": _panels(),
    "int8_linear": _int8(),
    "int8_rows_matmul": _rows(),
    "first_max": _first_max(),
    "f32_panels_pack": lambda: binding.f32_panels_pack(_f(binding._panels_size(50, 7)), _f(50, 7), 1),
}

BAD = [  # (call, error, the argument the message must name)
    (_first_max(x=_f(3, 10, dtype=torch.float64)), TypeError, "x: expected torch.float32, got torch.float64"),
    (_first_max(x=_f(10, 3).t()), TypeError, "x: expected a contiguous tensor"),
    (_first_max(x=torch.empty(3, 10, device="meta")), TypeError, "x: expected a CPU tensor"),
    (_first_max(out=_i(4)), ValueError, r"out: expected shape \(3,\), got \(4,\)"),
    (_first_max(x=[[1.0]]), TypeError, "x: expected a torch.Tensor, got list"),
    (_norm(weight=_f(9)), ValueError, "weight: expected shape"),
    (
        _norm(residual=_f(3, 8, dtype=torch.bfloat16), residual_out=_f(3, 8)),
        TypeError,
        "residual: expected torch.float32",
    ),
    (_norm(residual=_f(3, 8)), ValueError, "residual_out: given without residual, or residual without it"),
    (_norm(x=_f(8, 3).t()), TypeError, "x: expected a contiguous tensor"),
    (
        _attention(k_cache=_f(5, 16, 2, 8, dtype=torch.float16)),
        TypeError,
        "k_cache: expected torch.float32 or torch.bfloat16",
    ),
    (_attention(v_cache=_f(5, 16, 2, 8, dtype=torch.bfloat16)), TypeError, "v_cache: expected torch.float32"),
    (_attention(v_cache=_f(4, 16, 2, 8)), ValueError, "v_cache: expected shape"),
    (_attention(k_cache=_f(5, 16, 2, 4), v_cache=_f(5, 16, 2, 4)), ValueError, "k_cache: expected"),
    (_attention(k_cache=_f(5, 16, 3, 8), v_cache=_f(5, 16, 3, 8)), ValueError, "q: 4 heads is not a multiple"),
    (_attention(token_rows=_i(3).int()), TypeError, "token_rows: expected torch.int64, got torch.int32"),
    (_attention(token_positions=_i(2)), ValueError, "token_positions: expected shape"),
    (_attention(out=_f(3, 4, 9)), ValueError, "out: expected shape"),
    (_attention(q=_f(3, 8, 4).transpose(1, 2)), TypeError, "q: expected a contiguous tensor"),
    (_attention(block_tables=_i(10)), ValueError, "block_tables: expected 2 dimensions"),
    (_panels(panels=_f(10)), ValueError, "panels: expected 672 floats for a \\[50, 7\\] weight, got 10"),
    (_panels(bias=_f(49)), ValueError, "bias: expected shape"),
    (_panels(out=_f(3, 50)), ValueError, "out: expected 2 rows"),
    (lambda: binding.f32_panels_pack(_f(10), _f(50), 1), ValueError, "weight: expected 2 dimensions"),
    (_int8(packed=_f(2, 2, 16, 4, dtype=torch.int8)), ValueError, "packed: 8 padded inputs, but x has 10"),
    (_int8(packed=_f(1, 3, 16, 4, dtype=torch.int8)), ValueError, r"packed: expected \[2, in/4, 16, 4\]"),
    (_int8(col_sums=_f(2, 2, 16)), TypeError, "col_sums: expected torch.int16"),
    (_int8(scale=_f(2, 2, 16, dtype=torch.bfloat16)), TypeError, "scale: expected torch.float32"),
    (_int8(scale=_f(2, 1, 16)), ValueError, r"scale: expected shape \(2, 2, 16\)"),
    (_int8(group=6), ValueError, "group: 6 inputs per scale; use a multiple of 4 from 4 to 256"),
    (_rows(rows=_f(5, 11, dtype=torch.int8)), ValueError, "rows: expected 10 columns"),
    (_rows(out=_f(2, 6)), ValueError, "out: expected shape"),
    (_rows(scale=_f(5)), ValueError, r"scale: expected shape \(5, 1\)"),
    (_rows(group=8), ValueError, "group: 8 inputs per scale; use a positive multiple of 16"),
    (_step(slots=_i(4)), ValueError, "slots: expected shape"),
    (_step(sin=_f(64, 16)), ValueError, "sin: expected shape"),
    (_step(positions=_f(3)), TypeError, "positions: expected torch.int64"),
    (_layer(post_norm=_f(16)), ValueError, "post_norm: expected shape"),
    (_layer(heads=3), ValueError, "heads: 3 is not a multiple of kv_heads 2"),
    (_layer(intermediate=40), ValueError, r"gate_up: expected a \[80, 32\] weight"),
    (_layer(k_cache=_f(5, 16, 2, 8, dtype=torch.float16)), TypeError, "k_cache: expected torch.float32 or"),
    (
        lambda: binding.decode_weight_int8(
            _f(2, 3, 16, 4, dtype=torch.int8), _f(2, 1, 16), _f(2, 1, 16, dtype=torch.int16), 64, 20, _f(21)
        ),
        ValueError,
        "bias: expected shape",
    ),
    (lambda: binding.madvise(_f(4), 8, 16, 14), ValueError, "offset, length: bytes 8..24 lie outside"),
]


@pytest.mark.parametrize("name", GOOD)
def test_good_arguments_reach_c(fake, name):
    GOOD[name]()
    assert len(fake.calls) == 1 and fake.calls[0] == name.split("(")[0]


@pytest.mark.parametrize(
    "call, error, message", BAD, ids=[message.split(":")[0] + f"-{i}" for i, (_, _, message) in enumerate(BAD)]
)
def test_bad_arguments_are_refused_before_c(fake, call, error, message):
    with pytest.raises(error, match=message) as refused:
        call()
    assert "\n" not in str(refused.value)
    assert fake.calls == []


def test_decode_layer_checks_the_step_against_the_layer(fake):
    layer = _layer()()
    step = _step()()
    fake.calls.clear()
    hidden, work = _f(3, 32), _f(3 * 1000)
    with pytest.raises(ValueError, match=r"hidden: expected shape \(3, 32\), got \(2, 32\)"):
        binding.decode_layer(layer, step, _f(2, 32), _f(3, 32), True, work)
    with pytest.raises(ValueError, match="work: 2 floats, the step needs"):
        binding.decode_layer(layer, step, hidden, _f(3, 32), True, _f(2))
    with pytest.raises(TypeError, match="residual: expected torch.float32"):
        binding.decode_layer(layer, step, hidden, _f(3, 32, dtype=torch.float64), True, work)
    with pytest.raises(ValueError, match="step: rotary tables of width 16, but the layer's head_dim is 8"):
        binding.decode_layer(layer, _step(cos=_f(64, 16), sin=_f(64, 16))(), hidden, _f(3, 32), True, work)
    with pytest.raises(TypeError, match="layer: expected a binding.Layer"):
        binding.decode_layer(binding.Layer(), step, hidden, _f(3, 32), True, work)
    assert fake.calls == []
    binding.decode_layer(layer, step, hidden, _f(3, 32), True, None)
    assert fake.calls == ["decode_layer"]


def test_decode_layer_work_is_what_c_says(lib):
    layer = _layer()()
    assert layer._work_per_token == binding.decode_layer_work(layer) > 0
