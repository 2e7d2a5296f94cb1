"""The NCCL path on CUDA: two processes exchanging known tensors over NCCL, two ranks generating the one-rank
tokens (machines with 2+ GPUs), and the tensor-parallel runner's one-rank NCCL group scoring like the plain
runner (any CUDA machine; it exchanges nothing, so the two-rank tests are the ones that prove NCCL works).
Skipped without CUDA."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medvllm import LLM, SamplingParams
from medvllm.config import Config
from medvllm.hardware import detect
from tests.tiny_models import build_tiny

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ENGINE = dict(kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cuda")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


def _exchange(rank: int, port: int, results) -> None:
    """One rank: all_reduce and all_gather of tensors whose values say which rank made them."""
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = torch.arange(4.0, device="cuda") + 10 * (rank + 1)  # rank 0: 10..13, rank 1: 20..23
        summed = mine.clone()
        dist.all_reduce(summed)
        gathered = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(gathered, mine)
        results[rank] = (summed.cpu().tolist(), torch.cat(gathered).cpu().tolist())
    finally:
        dist.destroy_process_group()


@two_gpus
def test_two_ranks_exchange_known_tensors_over_nccl():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_exchange, args=(port, results), nprocs=2, join=True)
        results = dict(results)
    summed = [30.0, 32.0, 34.0, 36.0]
    gathered = [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0]
    assert results == {0: (summed, gathered), 1: (summed, gathered)}


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


@two_gpus
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
