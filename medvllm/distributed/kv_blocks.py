"""Every rank's KV pool must hold the same number of blocks: the scheduler on rank 0 hands out block
ids that each rank uses in its own pool. Ranks may hold different numbers of KV heads (uneven head
splits) or have different free memory, so each computes what fits and all take the smallest."""

from __future__ import annotations

import copy

import torch

from medvllm.config import Config
from medvllm.distributed.parallel import TensorParallel
from medvllm.engine.kv_cache import num_blocks_for


def agree_on_kv_blocks(
    config: Config, model, dtype: torch.dtype, device: torch.device, tp: TensorParallel, max_model_len: int
) -> Config:
    """A copy of `config` whose num_kvcache_blocks is the smallest pool any rank can hold."""
    blocks = tp.min_over_ranks(num_blocks_for(config, model, dtype, device, max_model_len))
    agreed = copy.copy(config)
    agreed.num_kvcache_blocks = blocks
    return agreed
