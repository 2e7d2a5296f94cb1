"""The default model (SmolLM2-135M: 9 heads over 3 KV heads, split 3 + 6) on 2 gloo ranks: the same greedy
tokens as one rank, through the Python API and through `medvllm inference generate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from medvllm import LLM, SamplingParams
from medvllm.distributed.executor import cpu_sockets
from tests.conftest import CHAT_PROMPTS

GREEDY = SamplingParams(temperature=0, max_tokens=24)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tp2_default():
    llm = LLM(max_model_len=2048, max_num_batched_tokens=4096, tensor_parallel_size=2, device="cpu")
    yield llm
    llm.engine.shutdown()


def chats(prompts):
    return [[{"role": "user", "content": p}] for p in prompts]


def test_greedy_tokens_equal_one_rank_for_five_prompts(default_llm, tp2_default):
    two = tp2_default.chat(chats(CHAT_PROMPTS), GREEDY)
    one = default_llm.chat(chats(CHAT_PROMPTS), GREEDY)
    for a, b in zip(one, two):
        assert len(a.outputs[0].token_ids) > 0
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.outputs[0].text == a.outputs[0].text


def _tagged(tag: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_cli_generate_with_two_ranks_end_to_end(default_llm):
    prompt, tag = CHAT_PROMPTS[0], uuid.uuid4().hex
    env = dict(os.environ, MEDVLLM_TEST_TAG=tag)
    env.pop("MEDVLLM_DEPLOYMENT_PROFILE", None)
    argv = [
        "inference",
        "generate",
        "--tensor-parallel-size",
        "2",
        "--device",
        "cpu",
        "--text",
        prompt,
        "--max-tokens",
        "8",
        "--max-model-len",
        "1024",
        "--deployment-profile",
        "none",
        "--json",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "medvllm.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["deployment"]["settings"]["tensor_parallel_size"] == {"value": 2, "source": "cli"}
    expected = default_llm.chat(chats([prompt]), SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    assert data["text"] == expected.text and data["usage"]["completion_tokens"] == 8
    assert "tensor_parallel_size=2 on CPU" in run.stderr
    if cpu_sockets() == 1:
        assert "on a single-socket machine: it will not make it faster" in run.stderr
    assert _tagged(tag) == []  # the worker exited with the CLI


def test_structured_outputs_on_two_ranks(default_llm, tp2_default):
    """Masks are built and applied on rank 0, where sampling runs: greedy tokens equal one rank's."""
    import re

    from medvllm.structured import StructuredOutputsParams

    schema = {
        "type": "object",
        "properties": {"drug": {"type": "string", "maxLength": 20}, "dose_mg": {"type": "integer", "maximum": 5000}},
        "required": ["drug", "dose_mg"],
        "additionalProperties": False,
    }
    json_params = SamplingParams(temperature=0, max_tokens=64, structured_outputs=StructuredOutputsParams(json=schema))
    regex = r"[0-9]{2,3}/[0-9]{2,3} mmHg"
    sampled = SamplingParams(
        temperature=0.8, seed=3, max_tokens=16, structured_outputs=StructuredOutputsParams(regex=regex)
    )
    prompts = chats(["Metformin 500 mg twice daily. Extract the drug as JSON.", "Give a blood pressure."])
    two = tp2_default.chat(prompts, [json_params, sampled])
    one = default_llm.chat(prompts[:1], json_params)
    assert two[0].outputs[0].token_ids == one[0].outputs[0].token_ids
    assert json.loads(two[0].outputs[0].text).keys() == {"drug", "dose_mg"}
    assert re.fullmatch(regex, two[1].outputs[0].text)
