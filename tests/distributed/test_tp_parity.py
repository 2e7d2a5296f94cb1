"""Tensor parallel over 2 gloo ranks on CPU computes the same logits as transformers and as one rank.

Tiny random models cover tied and untied embeddings, Qwen3's q/k norms, and a model with one KV head
(replicated on both ranks) whose MLP and vocabulary do not split evenly.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from medvllm import LLM, SamplingParams
from tests.engine_probe import LogitsRecorder
from tests.tiny_models import build_tiny, tiny_tokenizer

TOL = 1e-4
PARAMS = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
ENGINE = dict(kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cpu")


def build_mqa_uneven(folder):
    """1 KV head for 4 query heads, intermediate 99 and vocab 257: every split is uneven or replicated."""
    config = transformers.LlamaConfig(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=99,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
    model.eval().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen3", "mqa_uneven"])
def engines(request, tmp_path_factory):
    """(transformers model, our tp=1 LLM, our tp=2 LLM) over the same folder."""
    folder = tmp_path_factory.mktemp(request.param)
    hf = build_mqa_uneven(folder) if request.param == "mqa_uneven" else build_tiny(request.param, folder)
    one = LLM(str(folder), **ENGINE)
    two = LLM(str(folder), tensor_parallel_size=2, **ENGINE)
    yield hf, one, two
    two.engine.shutdown()


def prompts_of(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=g).tolist() for n in lengths]


def generate_with_logits(llm, prompts):
    recorder = LogitsRecorder(llm.engine)
    outs = llm.generate(prompts, PARAMS)
    return [(o.outputs[0].token_ids, recorder.logits_of(o.request_id), o) for o in outs]


def hf_logits(model, token_ids):
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def test_two_ranks_match_one_rank_and_transformers(engines):
    hf, one, two = engines
    prompts = prompts_of([5, 17, 33, 40], seed=1)
    for prompt, (tokens1, logits1, _), (tokens2, logits2, _) in zip(
        prompts, generate_with_logits(one, prompts), generate_with_logits(two, prompts)
    ):
        assert tokens2 == tokens1
        assert logits2.shape == logits1.shape == (len(tokens2), hf.config.vocab_size)
        assert (logits2 - logits1).abs().max().item() < TOL
        ref = hf_logits(hf, prompt + tokens2[:-1])[len(prompt) - 1 :]
        assert (logits2 - ref).abs().max().item() < TOL


def test_prefix_cache_hit_over_two_ranks(engines):
    hf, _, two = engines
    first = prompts_of([40], seed=2)[0]
    generate_with_logits(two, [first])
    second = first[:32] + prompts_of([7], seed=3)[0]  # shares two 16-token blocks
    [(tokens, logits, out)] = generate_with_logits(two, [second])
    assert out.metrics.num_cached_tokens == 32
    ref = hf_logits(hf, second + tokens[:-1])[len(second) - 1 :]
    assert (logits - ref).abs().max().item() < TOL


def test_scoring_every_position_over_two_ranks(engines):
    hf, _, two = engines
    tokens = prompts_of([30], seed=4)[0]
    ours = two.engine.runner.score(tokens)
    assert (ours - hf_logits(hf, tokens)).abs().max().item() < TOL
