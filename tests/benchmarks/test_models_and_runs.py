"""The benchmarks' model writer and run selection: a tiny random Llama written as GGUF loads through our
loader with the config and weights it was written with; --models / --medvllm parsing; the tables."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, rope_theta=10000.0, context=256)


def _load(*paths: Path) -> list:
    """The scripts' modules, loaded from their files; sys.path and sys.modules are as they were afterwards
    (the scripts put benchmarks/peers on sys.path and import each other by plain name)."""
    saved_path = list(sys.path)
    saved = dict(sys.modules)
    try:
        sys.path[:0] = [str(BENCH), str(BENCH / "peers")]
        loaded = []
        for path in paths:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            loaded.append(module)
        return loaded
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - set(saved):  # the scripts' own modules, not what they imported
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(BENCH)):
                del sys.modules[name]


llama_1b, selection, table, compare_cpu, startup_memory = _load(
    BENCH / "llama_1b.py",
    BENCH / "peers" / "selection.py",
    BENCH / "peers" / "table.py",
    BENCH / "compare_cpu.py",
    BENCH / "startup_memory.py",
)


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny") / "tiny-q8_0.gguf")
    llama_1b.write(path, TINY, "Q8_0")
    return path


def test_tiny_random_llama_loads_with_the_shape_it_was_written_with(tiny_q8):
    from medvllm.loader import open_model

    source = open_model(tiny_q8)
    c = source.hf_config
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (64, 2, 128)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert c.rope_parameters["rope_theta"] == 10000.0 and c.max_position_embeddings == 256
    assert c.vocab_size == 49152 and len(source.tokenizer) == 49152  # the default model's tokenizer
    assert c.tie_word_embeddings is False  # an output tensor of its own
    assert "Q8_0" in source.description


def test_q_and_k_come_back_in_hugging_face_layout(tiny_q8):
    """The writer permutes Q/K rows as llama.cpp's converter does; our loader's un-permutation must give
    back the random tensor it drew (to Q8_0's rounding), and a wrong layout would not."""
    from medvllm.loader import open_model

    weights = dict(open_model(tiny_q8).iter_weights())
    plan = llama_1b.tensor_plan(TINY, 49152, "Q8_0")
    for gguf_name, hf_name, heads in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 4),
        ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2),
    ]:
        index = next(i for i, (name, _, _) in enumerate(plan) if name == gguf_name)
        gen = torch.Generator().manual_seed(llama_1b.SEED * 100_003 + index)
        drawn = torch.randn(plan[index][1], generator=gen) * llama_1b.STD
        assert (weights[hf_name] - drawn).abs().max() < 1e-3  # Q8_0: half a step of max|w| / 127
        as_stored = torch.from_numpy(llama_1b.permute(drawn.numpy(), heads))  # what a loader that kept it would see
        assert (weights[hf_name] - as_stored).abs().max() > 0.01
    assert torch.equal(weights["model.norm.weight"], torch.ones(64))


def test_q4_1_file_is_described_by_its_type_size_and_parameters(tmp_path):
    path = str(tmp_path / "tiny-q4_1.gguf")
    llama_1b.write(path, TINY, "Q4_1")
    got = selection.describe(path)
    expected = sum(torch.Size(shape).numel() for _, shape, _ in llama_1b.tensor_plan(TINY, 49152, "Q4_1"))
    assert got["quant"] == "Q4_1" and got["params"] == expected and got["file"] == "tiny-q4_1.gguf"
    assert selection.headline(got).startswith("tiny-q4_1.gguf (GGUF Q4_1, ")
    assert selection.model_path(path) == path


def test_cached_file_name_is_keyed_by_every_parameter():
    base = llama_1b.cached_path()
    assert base == llama_1b.cached_path(dict(llama_1b.TINYLLAMA))
    assert (
        len({base, llama_1b.cached_path(quant="Q8_0"), llama_1b.cached_path(seed=1), llama_1b.cached_path(TINY)}) == 4
    )
    with pytest.raises(SystemExit, match="K-quants"):
        llama_1b.cached_path(quant="Q6_K")


def test_medvllm_runs_parse_profile_and_method():
    runs = selection.medvllm_runs("auto, none+dynamic,edge_cpu_int8", "ignored", None)
    assert [(r.profile, r.method) for r in runs] == [("auto", None), ("none", "dynamic"), ("edge_cpu_int8", None)]
    assert runs[1].args() == ["--profile", "none", "--method", "dynamic"]
    assert selection.row_names(runs) == ["Med-vLLM auto", "Med-vLLM none+dynamic", "Med-vLLM edge_cpu_int8"]
    single = selection.medvllm_runs(None, "none", "dynamic")
    assert single == [selection.MedvllmRun("none", "dynamic")] and selection.row_names(single) == ["Med-vLLM"]
    for bad in ("none+", "+dynamic"):
        with pytest.raises(SystemExit):
            selection.medvllm_runs(bad, "auto", None)
    with pytest.raises(SystemExit, match="neither"):
        selection.model_path("llama-7b")


def test_default_invocation_plans_the_same_rows_and_several_medvllm_rows_come_first(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["compare_cpu.py"])
    args = compare_cpu.parse_args()
    assert args.models == "default" and args.medvllm is None
    assert [name for name, _, _ in compare_cpu.planned(args)] == [
        "Med-vLLM",
        "transformers float32",
        "llama.cpp",
        "vLLM CPU",
    ]
    argv = ["compare_cpu.py", "--systems", "medvllm,llama.cpp", "--medvllm", "auto,none+dynamic"]
    monkeypatch.setattr(sys, "argv", argv)
    assert compare_cpu.planned(compare_cpu.parse_args()) == [
        ("Med-vLLM auto", "medvllm", ["--profile", "auto"]),
        ("Med-vLLM none+dynamic", "medvllm", ["--profile", "none", "--method", "dynamic"]),
        ("llama.cpp", "llama.cpp", []),
    ]


def test_large_files_skip_the_hf_peers_and_plots_get_one_file_per_model():
    small, big = {"bytes": 10**8, "params": 1.35e8}, {"bytes": 8 * 10**8, "params": 1.1e9}
    assert compare_cpu.hf_skip(small, 0.5) is None
    assert compare_cpu.hf_skip(big, 0.5).startswith("skipped: the file is 0.80 GB")
    models = [{"file": "a.gguf"}, {"file": "b.gguf"}]
    assert compare_cpu.plot_paths("out.png", models) == ["out-a.png", "out-b.png"]
    assert compare_cpu.plot_paths("out.png", models[:1]) == ["out.png"] and compare_cpu.plot_paths(None, models) == []


def test_each_medvllm_row_gets_ratios_against_the_peers_only():
    ok = lambda decode: {"status": "ok", "single_decode": decode, "batched": {}}  # noqa: E731
    results = {"Med-vLLM a": ok(10.0), "Med-vLLM b": ok(30.0), "llama.cpp": ok(20.0)}
    lines = table.render(results, [], ours=["Med-vLLM a", "Med-vLLM b"]).splitlines()
    ratios = [line.split("|")[1].strip() for line in lines if "ratio ours / peer" in line]
    assert ratios == ["Med-vLLM a / llama.cpp", "Med-vLLM b / llama.cpp"]
    assert next(line for line in lines if line.startswith("| Med-vLLM b / llama.cpp")).split("|")[2].strip() == "1.50×"


def test_startup_budgets_and_their_pass_fail_cells():
    gib, mib = 2**30, 2**20
    assert startup_memory.budgets(gib, 100 * mib) == (gib + 400 * mib, 3.0)
    model = {"file": "m.gguf", "bytes": gib}
    fig = {"status": "ok", "label": "x", "first_token_s": 3.5, "peak_rss_bytes": gib + 390 * mib, "kv_bytes": 100 * mib}
    row = startup_memory.render([{"model": model, "config": "Med-vLLM none", "result": fig}]).splitlines()[2]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[10:] == ["pass", "3.0", "FAIL"]
    failed = {"status": "failed: exit code 1: boom"}
    lines = startup_memory.render([{"model": model, "config": "c", "result": failed}]).splitlines()
    assert lines[0].count("|") == lines[2].count("|")
