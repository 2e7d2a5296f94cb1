"""The NCCL path on CUDA: a one-rank NCCL group through the tensor-parallel runner (any CUDA machine), and
two ranks against one (machines with 2+ GPUs). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from medvllm import LLM, SamplingParams
from medvllm.config import Config
from medvllm.hardware import detect
from tests.tiny_models import build_tiny

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ENGINE = dict(kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cuda")


def test_one_rank_nccl_group_scores_like_the_plain_runner(tmp_path):
    from medvllm.distributed.executor import TensorParallelRunner
    from medvllm.engine.model_runner import ModelRunner
    from medvllm.loader import open_model

    build_tiny("llama", tmp_path)
    config = Config(
        model=str(tmp_path), tensor_parallel_size=1, device="cuda", num_kvcache_blocks=32, hardware=detect()
    )
    source = open_model(str(tmp_path))
    plain = ModelRunner(config, source, 256)
    runner = TensorParallelRunner(config, source, 256)
    try:
        tp = runner.workers.tp
        assert dist.get_backend(tp.group) == "nccl" and dist.get_backend(tp.control) == "gloo"
        x = torch.arange(6.0, device="cuda").view(2, 3)
        assert torch.equal(tp.all_reduce(x.clone()), x)
        assert torch.equal(tp.gather_last_dim(x, [3]), x)
        tokens = list(range(3, 40))
        ours = runner.score(tokens)
        assert ours.device.type == "cuda"
        assert (ours - plain.score(tokens)).abs().max().item() < 1e-4
    finally:
        runner.shutdown()
    assert not dist.is_initialized()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_generate_the_one_gpu_tokens(tmp_path):
    build_tiny("qwen3", tmp_path)
    prompts = [[5, 6, 7], list(range(3, 40))]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    one = LLM(str(tmp_path), **ENGINE)
    expected = [o.outputs[0].token_ids for o in one.generate(prompts, params)]
    two = LLM(str(tmp_path), tensor_parallel_size=2, **ENGINE)
    try:
        assert [o.outputs[0].token_ids for o in two.generate(prompts, params)] == expected
    finally:
        two.engine.shutdown()
