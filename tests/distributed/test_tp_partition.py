"""How tensor parallelism splits heads, MLP and vocabulary, and the errors for splits that cannot work."""

from __future__ import annotations

import os

import pytest
import transformers

from medvllm import LLM
from medvllm.cli.main import main
from medvllm.distributed.partition import check_heads, head_shard, split, split_sizes, valid_tp_sizes
from medvllm.errors import ConfigError
from tests.tiny_models import tiny_tokenizer


@pytest.mark.parametrize("total,parts", [(256, 2), (1536, 2), (49152, 4), (9, 2), (7, 3), (3, 3)])
def test_splits_cover_everything_once_and_differ_by_at_most_one(total, parts):
    pieces = [split(total, parts, r) for r in range(parts)]
    assert [start for start, _ in pieces] == [sum(s for _, s in pieces[:r]) for r in range(parts)]
    assert sum(size for _, size in pieces) == total
    assert max(split_sizes(total, parts)) - min(split_sizes(total, parts)) <= 1


def owners(num_heads, num_kv_heads, tp):
    """For every rank: the query heads it computes, and the KV head each of them reads."""
    out = []
    for rank in range(tp):
        s = head_shard(num_heads, num_kv_heads, tp, rank)
        qs = list(range(s.q_start, s.q_start + s.num_heads))
        kvs = list(range(s.kv_start, s.kv_start + s.num_kv_heads))
        per_kv = s.num_heads // s.num_kv_heads
        out.append([(q, kvs[i // per_kv]) for i, q in enumerate(qs)])
    return out


@pytest.mark.parametrize(
    "heads,kv,tp", [(9, 3, 2), (9, 3, 3), (9, 3, 9), (32, 8, 4), (32, 8, 16), (4, 1, 2), (4, 2, 4), (16, 16, 3)]
)
def test_every_query_head_is_computed_once_next_to_its_kv_head(heads, kv, tp):
    pairs = [p for rank in owners(heads, kv, tp) for p in rank]
    assert sorted(q for q, _ in pairs) == list(range(heads))
    group = heads // kv
    assert all(kv_head == q // group for q, kv_head in pairs)  # the GQA mapping of transformers


def test_default_model_heads_split_unevenly_over_two_ranks():
    # SmolLM2-135M: 9 heads, 3 KV heads -> rank 0 (which also samples) gets 1 KV group, rank 1 gets 2
    assert [head_shard(9, 3, 2, r).num_heads for r in range(2)] == [3, 6]
    assert valid_tp_sizes(9, 3) == [1, 2, 3, 9]


@pytest.mark.parametrize("heads,kv,tp", [(9, 3, 4), (9, 3, 6), (32, 8, 12), (4, 2, 8)])
def test_impossible_split_names_the_head_counts_and_the_sizes_that_work(heads, kv, tp):
    with pytest.raises(ConfigError) as err:
        check_heads(heads, kv, tp, "m")
    message = str(err.value)
    assert f"tensor_parallel_size={tp}" in message and f"{heads} attention heads ({kv} KV heads)" in message
    assert str(valid_tp_sizes(heads, kv)[-1]) in message and "\n" not in message


@pytest.fixture(scope="module")
def six_heads(tmp_path_factory):
    """A tiny Llama with 6 heads and 3 KV heads: tensor_parallel_size=4 cannot split it."""
    folder = tmp_path_factory.mktemp("six_heads")
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=6,
        num_key_value_heads=3,
        max_position_embeddings=128,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def _children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    kids.append(int(pid))
        except OSError:
            pass
    return kids


def test_engine_refuses_before_starting_any_worker(six_heads):
    before = _children()
    with pytest.raises(ConfigError, match=r"cannot split .*6 attention heads \(3 KV heads\).* in 1, 2, 3, 6"):
        LLM(six_heads, tensor_parallel_size=4, device="cpu", num_kvcache_blocks=8, max_model_len=64)
    assert _children() == before


def test_cli_prints_the_split_error_as_one_line(six_heads, capsys):
    code = main(
        [
            "inference",
            "generate",
            "--model",
            six_heads,
            "--tensor-parallel-size",
            "4",
            "--device",
            "cpu",
            "--deployment-profile",
            "none",
            "--no-chat",
            "--text",
            "w5 w6",
            "--num-kvcache-blocks",
            "8",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("medvllm: error: tensor_parallel_size=4 cannot split") and "(3 KV heads)" in last
