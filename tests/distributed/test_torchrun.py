"""Under torchrun (RANK / WORLD_SIZE / MASTER_ADDR set), ranks join the launcher's group instead of
spawning workers: rank 0 generates, rank 1 serves its shard and exits when rank 0 is done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from medvllm import LLM, SamplingParams
from tests.tiny_models import build_tiny

SCRIPT = """
import json, sys
from medvllm import LLM, SamplingParams
llm = LLM(sys.argv[1], kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cpu",
          tensor_parallel_size=2)
outs = llm.generate([[5, 6, 7], list(range(3, 40))], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
print(json.dumps([o.outputs[0].token_ids for o in outs]))
"""


def test_torchrun_two_ranks_generate_the_one_rank_tokens(tmp_path):
    folder = tmp_path / "tiny"
    build_tiny("llama", folder)
    script = tmp_path / "generate.py"
    script.write_text(SCRIPT)
    tag = uuid.uuid4().hex
    env = dict(os.environ, MEDVLLM_TEST_TAG=tag)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("[[")]
    assert len(lines) == 1  # printed by rank 0 only: rank 1 never returned from LLM()
    one = LLM(str(folder), kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cpu")
    expected = one.generate(
        [[5, 6, 7], list(range(3, 40))], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    )
    assert json.loads(lines[0]) == [o.outputs[0].token_ids for o in expected]
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag.encode() in f.read():
                    leftovers.append(pid)
        except OSError:
            pass
    assert leftovers == []


def test_world_size_must_equal_tensor_parallel_size(monkeypatch, tmp_path):
    from medvllm.errors import ConfigError

    build_tiny("llama", tmp_path)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(ConfigError, match="tensor_parallel_size=2 but torchrun started WORLD_SIZE=3"):
        LLM(str(tmp_path), tensor_parallel_size=2, device="cpu", num_kvcache_blocks=8, max_model_len=64)
