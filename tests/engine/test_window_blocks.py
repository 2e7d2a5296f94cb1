"""The sliding-window layers' own KV pool: blocks a query can no longer see go back, prefix hits are cut
to what both pools hold, and the answers stay transformers' (tiny Gemma models, float32)."""

from __future__ import annotations

import pytest

from medvllm import LLM, SamplingParams
from medvllm.engine.block_manager import BlockManager
from medvllm.engine.sequence import Sequence
from medvllm.engine.window_blocks import NULL_BLOCK, WindowBlocks
from tests.engine_probe import check_against_hf
from tests.models.test_parity import prompts_of
from tests.tiny_models import build_tiny

BS = 4
PARAMS = SamplingParams(max_tokens=4)


def manager(blocks=32, window_blocks=12, window=6) -> BlockManager:
    return BlockManager(blocks, BS, window=WindowBlocks(window_blocks, window, BS))


def seq_of(tokens, name="r") -> Sequence:
    return Sequence(name, None, list(tokens), PARAMS, BS)


def held(seq: Sequence) -> list[int]:
    return [i for i, b in enumerate(seq.window_table) if b != NULL_BLOCK]


def test_blocks_out_of_the_window_go_back_as_the_sequence_grows():
    bm = manager()
    seq = seq_of(range(30))
    bm.allocate(seq)
    assert len(seq.block_table) == len(seq.window_table) == 8  # the prompt's step writes all 30 tokens
    seq.num_computed_tokens = 30
    for t in range(30, 60):
        seq.append_token(t)
        bm.append_slot(seq)
        # a query at position len-1 sees keys len-6 .. len-1: only the blocks holding those stay
        first = (len(seq) - 1 - 6 + 1) // BS
        assert held(seq) == list(range(first, -(-len(seq) // BS)))
        seq.num_computed_tokens = len(seq)
    assert bm.window.num_held_blocks <= 3  # a window of 6 spans at most 3 blocks of 4
    bm.deallocate(seq)
    assert bm.window.num_held_blocks == 0 and bm.num_free_blocks == 32


def test_a_prefix_hit_is_cut_to_the_window_the_pool_still_holds():
    bm = manager()
    first = seq_of(range(20), "a")
    bm.allocate(first)
    first.num_computed_tokens = 20
    bm.deallocate(first)  # its blocks stay cached in both pools
    again = seq_of(list(range(20)) + [99], "b")
    assert bm.num_cached_tokens(again) == 20
    # evict the local block the next query (position 20, keys 15..20) needs: block 3 (tokens 12..15)
    block = bm.window.pool.blocks[bm.window.pool.cached[again.block_hashes[3]]]
    del bm.window.pool.cached[block.hash]
    block.forget()
    # the longest hit whose window is cached: 12 tokens (keys 7..12 sit in blocks 1 and 2)
    assert bm.num_cached_tokens(again) == 12
    bm.allocate(again)
    assert again.num_computed_tokens == 12
    assert held(again)[:2] == [1, 2] and again.window_table[0] == NULL_BLOCK


def test_a_local_block_computed_after_other_global_blocks_is_not_a_hit():
    bm = manager()
    a = seq_of(range(20), "a")
    bm.allocate(a)
    a.num_computed_tokens = 20
    bm.deallocate(a)
    # the global blocks are evicted and computed again: new uids, which the cached local blocks lack
    for block in bm.blocks:
        if block.hash is not None:
            del bm.cached[block.hash]
            block.forget()
    b = seq_of(range(20), "b")
    bm.allocate(b)
    b.num_computed_tokens = 20
    bm.deallocate(b)
    c = seq_of(list(range(20)) + [7], "c")
    hits, found = bm._lookup(c)
    assert len(hits) == 5 and all(w.parent == g.uid for w, g in zip(found, hits[len(hits) - len(found) :]))


def test_admission_waits_for_the_window_pool_and_reset_clears_both():
    bm = manager(blocks=64, window_blocks=4)  # the null block and three to hand out
    a = seq_of(range(12), "a")
    assert bm.can_allocate(a)
    bm.allocate(a)
    assert bm.window.num_free_blocks == 0
    assert not bm.can_allocate(seq_of(range(50, 54), "b"))  # the main pool has room, the window pool not
    assert not bm.reset_prefix_cache()
    a.num_computed_tokens = 12
    bm.deallocate(a)
    assert bm.reset_prefix_cache() and not bm.window.pool.cached and not bm.cached


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3")
    return folder, build_tiny("gemma3", folder)


def test_a_prompt_longer_than_the_window_pool_runs_and_matches_transformers(tiny):
    """Window 12, blocks of 16: the window pool hands out 8 blocks, the 200-token prompt takes 13."""
    folder, model = tiny
    llm = LLM(
        str(folder),
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
        max_num_seqs=2,
        max_num_batched_tokens=32,
    )
    stats = llm.engine.stats()
    assert stats["window_kv_blocks"] == 8  # 2 requests x 3 blocks + 2 for a step's prompt tokens
    outs = check_against_hf(model, llm, prompts_of([200, 90], seed=4), decode_steps=20, tol=1e-4, relative=True)
    assert len(outs) == 2
    stats = llm.engine.stats()
    assert stats["window_kv_blocks_held"] == 0 and stats["kv_cache_usage"] == 0
    # prefix hit after the prompt's blocks went back: cut to what the window pool kept
    again = check_against_hf(model, llm, prompts_of([200], seed=4), decode_steps=2, tol=1e-4, relative=True)
    assert again[0].metrics.num_cached_tokens % 16 == 0


def test_the_window_pool_takes_its_bound_and_the_full_layers_the_rest_of_the_budget(tiny):
    from medvllm.engine.kv_cache import layer_block_bytes

    folder, _ = tiny
    space = 0.004  # GiB
    llm = LLM(
        str(folder),
        kvcache_block_size=16,
        kv_cache_space_gib=space,
        max_model_len=256,
        max_num_seqs=2,
        max_num_batched_tokens=32,
    )
    runner = llm.engine.runner
    per_layer = layer_block_bytes(runner.model, 16, runner.kv_cache.dtype)
    budget = int(space * 2**30)
    held = runner.kv_cache.nbytes + runner.window_cache.nbytes
    assert budget - 2 * per_layer < held <= budget  # two full-attention layers: at most one block's rounding
    assert runner.window_cache.shape[2] == 9  # the bound: 2 requests x 3 blocks, 2 for a step, the null block
    assert runner.num_blocks > budget // per_layer // 4  # more than an even split over the 4 layers
    assert llm.runtime_info()["kv_window_pool"] == {"blocks": 8, "window": 12}
