"""The benchmark's pure helpers: parsing llama.cpp's JSONL output, medians, the ratio table.

The sample lines are real output of llama-bench and llama-batched-bench (llama.cpp 0c1e570) on the
default model; the expected figures are recomputed here from the fields llama.cpp printed.
"""

import importlib.util
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


def _load_peers(*names: str) -> list:
    """The peer scripts' modules, loaded from their files in order (llama_cpp and vllm_cpu import `common`).

    They are visible in sys.modules under their plain names only while they load, so that their imports of
    each other resolve; afterwards sys.modules is as it was."""
    saved = {name: sys.modules.get(name) for name in names}
    try:
        loaded = []
        for name in names:
            spec = importlib.util.spec_from_file_location(name, PEERS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded.append(module)
        return loaded
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


common, llama_cpp, table, vllm_cpu = _load_peers("common", "llama_cpp", "table", "vllm_cpu")

LLAMA_BENCH = (
    "main: loading model\n"
    '{"build_commit": "0c1e570", "model_type": "llama 256M Q4_1", "n_threads": 2, "flash_attn": 1, '
    '"n_prompt": 30, "n_gen": 0, "n_depth": 0, "avg_ns": 7300032687, "stddev_ns": 0, "avg_ts": 4.109571, '
    '"stddev_ts": 0.000000, "samples_ns": [ 7300032687 ],"samples_ts": [ 4.10957 ]}\n'
    '{"build_commit": "0c1e570", "model_type": "llama 256M Q4_1", "n_threads": 2, "flash_attn": 1, '
    '"n_prompt": 0, "n_gen": 16, "n_depth": 0, "avg_ns": 28463300418, "stddev_ns": 0, "avg_ts": 0.562127, '
    '"stddev_ts": 0.000000, "samples_ns": [ 28463300418 ],"samples_ts": [ 0.562127 ]}\n'
)
BATCHED_BENCH = (
    "main: n_kv_max = 1024, n_batch = 2048\n"
    '{"n_kv_max": 1024, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 0, "is_pp_shared": 0, "n_gpu_layers": -1, '
    '"n_threads": 2, "n_threads_batch": 2, "pp": 40, "tg": 8, "pl": 1, "n_kv": 48, "t_pp": 6.679966, '
    '"speed_pp": 5.988054, "t_tg": 20.116020, "speed_tg": 0.397693, "t": 26.795986, "speed": 1.791313}\n'
    '{"n_kv_max": 1024, "n_batch": 2048, "n_ubatch": 512, "flash_attn": 0, "is_pp_shared": 0, "n_gpu_layers": -1, '
    '"n_threads": 2, "n_threads_batch": 2, "pp": 40, "tg": 8, "pl": 4, "n_kv": 192, "t_pp": 5.463500, '
    '"speed_pp": 29.285257, "t_tg": 32.244549, "speed_tg": 0.992416, "t": 37.708050, "speed": 5.091751}\n'
)


def test_llama_bench_prompt_and_generation_speeds():
    got = llama_cpp.parse_llama_bench(LLAMA_BENCH)
    assert abs(got["pp"] - 30 / 7.300032687) < 1e-5
    assert abs(got["tg"] - 16 / 28.463300418) < 1e-5


def test_batched_bench_counts_generated_tokens_over_total_time():
    got = llama_cpp.parse_batched_bench(BATCHED_BENCH)
    assert set(got) == {1, 4}
    assert abs(got[4] - 4 * 8 / 37.708050) < 1e-9
    # llama.cpp's own "speed" counts prompt tokens too: recover it from ours plus the prompt tokens
    assert abs((got[4] * 37.708050 + 4 * 40) / 37.708050 - 5.091751) < 1e-5


def test_medians_are_taken_per_key_and_nested():
    runs = [
        {"single_decode": 10.0, "batched": {"32": 100.0}, "ttft_s": None},
        {"single_decode": 30.0, "batched": {"32": 300.0}, "ttft_s": None},
        {"single_decode": 20.0, "batched": {"32": 250.0}, "ttft_s": None},
    ]
    assert common.medians(runs) == {"single_decode": 20.0, "batched": {"32": 250.0}, "ttft_s": None}


def test_table_ratios_are_ours_over_peer_and_missing_peers_say_why():
    results = {
        "Med-vLLM": {
            "status": "ok",
            "label": "x",
            "single_decode": 50.0,
            "ttft_s": 0.02,
            "batched": {"32": 600.0},
            "startup_s": 3.0,
            "peak_rss_bytes": 2**29,
        },
        "llama.cpp": {
            "status": "ok",
            "label": "y",
            "single_decode": 100.0,
            "ttft_s": 0.04,
            "batched": {"32": 200.0},
            "startup_s": 1.0,
            "peak_rss_bytes": 2**28,
        },
        "vLLM CPU": {"status": "not built: run bash benchmarks/peers/vllm_cpu.sh"},
    }
    lines = table.render(results, [32]).splitlines()
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    ratio = next(line for line in lines if line.startswith("| Med-vLLM / llama.cpp"))
    # decode, TTFT, 32 requests, start-up, peak RSS: each ours / theirs
    assert [c.strip() for c in ratio.split("|")[2:7]] == ["0.50×", "0.50×", "3.00×", "3.00×", "2.00×"]
    assert any("not built: run bash benchmarks/peers/vllm_cpu.sh" in line for line in lines)
    assert not any(line.startswith("| Med-vLLM / vLLM") for line in lines)


def test_crash_reason_names_the_signal_and_the_last_error():
    why = vllm_cpu.crash_reason(-4, "INFO starting\nRuntimeError: no AVX-512\nINFO bye\n")
    assert why == "killed by SIGILL: RuntimeError: no AVX-512"
    assert vllm_cpu.crash_reason(1, "") == "exit code 1: no output"
