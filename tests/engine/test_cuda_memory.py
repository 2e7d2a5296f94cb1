"""KV sizing on CUDA: the budget leaves room for the largest step's activations, measured by running
that step first. The memory readings need a GPU (tests/backends/cuda/); the step and the arithmetic
run anywhere."""

from __future__ import annotations

import torch

from medvllm.config import Config
from medvllm.engine.cuda_memory import kv_budget_bytes, largest_step, run_largest_step
from medvllm.hardware import detect
from medvllm.loader import open_model
from medvllm.models.loading import build_model
from tests.tiny_models import build_tiny

GIB = 1 << 30


def test_the_budget_leaves_out_what_is_in_use_and_the_largest_steps_activations():
    # 80 GiB card, 0.9 of it allowed, 20 GiB in use after loading, a 3 GiB step
    assert kv_budget_bytes(80 * GIB, 60 * GIB, 0.9, 3 * GIB) == int(72 * GIB - 20 * GIB - 3 * GIB)
    assert kv_budget_bytes(80 * GIB, 60 * GIB, 0.9, 0) > kv_budget_bytes(80 * GIB, 60 * GIB, 0.9, 1)


def test_the_largest_step_is_what_the_scheduler_can_form():
    config = Config(hardware=detect(), device="cpu", max_num_seqs=8, max_num_batched_tokens=100)
    assert largest_step(config, max_model_len=4096) == (8, 12)  # 8 prompts of 12 tokens
    assert largest_step(config, max_model_len=10) == (8, 10)  # no longer than the model's context
    one = Config(hardware=detect(), device="cpu", max_num_seqs=1, max_num_batched_tokens=64)
    assert largest_step(one, max_model_len=4096) == (1, 64)


def test_the_profiling_step_runs_the_model_on_a_scratch_cache(tmp_path):
    build_tiny("llama", tmp_path)
    config = Config(hardware=detect(), device="cpu", max_num_seqs=4, max_num_batched_tokens=40)
    model = build_model(open_model(str(tmp_path)), 64, torch.float32, torch.device("cpu"))
    calls = []
    real = model.compute_logits
    model.compute_logits = lambda hidden: calls.append(hidden.shape) or real(hidden)
    run_largest_step(model, config, 64, torch.float32, torch.device("cpu"))
    assert calls == [torch.Size([4, model.config.hidden_size])]  # one row of logits per prompt
    attn = model.model.layers[0].self_attn.attn
    assert attn.k_cache.shape[0] == 4 * 1  # 4 prompts of 10 tokens: one 16-token block each
