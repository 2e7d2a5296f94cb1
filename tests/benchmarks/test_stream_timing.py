"""serve_load.py's figures from token arrival times: inter-token gaps pooled over streams."""

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_timing.py"
spec = importlib.util.spec_from_file_location("stream_timing", PATH)
timing = importlib.util.module_from_spec(spec)
sys.modules["stream_timing"] = timing  # dataclasses look their module up while the class is made
try:
    spec.loader.exec_module(timing)
finally:
    del sys.modules["stream_timing"]


def test_itl_pools_every_streams_gaps_and_ttft_counts_from_the_send():
    a = timing.Timed(started=0.0, token_times=[0.5, 0.6, 0.7, 2.7])  # a 2 s stall after its third token
    b = timing.Timed(started=1.0, token_times=[1.2] + [1.2 + 0.1 * i for i in range(1, 100)])
    assert a.ttft == 0.5 and round(b.ttft, 6) == 0.2 and timing.Timed(0.0).ttft is None
    figures = timing.itl_figures([a, b])
    assert figures["itl_samples"] == 3 + 99
    assert figures["itl_p50_s"] == 0.1 and figures["itl_max_s"] == 2.0 and figures["itl_max_per_p50"] == 20.0
    assert figures["itl_p99_s"] == 0.1  # one stall in 102 gaps is past the 99th percentile


def test_long_prompts_differ_and_grow_with_words():
    one, two = timing.long_prompt(1400, 0), timing.long_prompt(1400, 1)
    assert one != two and 1300 < len(one.split()) < 1500
