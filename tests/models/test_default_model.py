"""The real default model (SmolLM2-135M-Instruct GGUF): same greedy tokens as transformers."""

from __future__ import annotations

import torch

from medvllm import SamplingParams
from tests.conftest import CHAT_PROMPTS


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        )
    return out[0, len(prompt_ids) :].tolist()


def test_chat_greedy_64_tokens_equal_transformers(default_llm, hf_default):
    model, hf_tokenizer = hf_default
    conversations = [[{"role": "user", "content": p}] for p in CHAT_PROMPTS]
    outs = default_llm.chat(conversations, SamplingParams(temperature=0, max_tokens=64))
    for conv, out in zip(conversations, outs):
        ids = default_llm.encode_chat(conv)
        ref_ids = hf_tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        ref_ids = list(ref_ids["input_ids"] if hasattr(ref_ids, "keys") else ref_ids)
        assert ids == ref_ids, "chat template differs from transformers'"
        expected = hf_greedy(model, ids, 64)
        assert out.outputs[0].token_ids == expected
        assert out.outputs[0].finish_reason == ("length" if len(expected) == 64 else "stop")


def test_each_prompt_alone_equals_in_batch(default_llm):
    g = torch.Generator().manual_seed(7)
    prompts = [
        torch.randint(100, 40000, (int(n),), generator=g).tolist() for n in torch.randint(4, 120, (16,), generator=g)
    ]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    batched = default_llm.generate(prompts, params)
    for prompt, out in zip(prompts, batched):
        alone = default_llm.generate([prompt], params)[0]
        assert alone.outputs[0].token_ids == out.outputs[0].token_ids


def test_streamed_text_equals_final_text(default_llm):
    params = SamplingParams(temperature=0, max_tokens=40)
    ids = default_llm.encode_chat([{"role": "user", "content": CHAT_PROMPTS[0]}])
    pieces, last = [], None
    for last in default_llm.stream(ids, params):
        pieces.append(last.outputs[0].delta_text)
    assert last.finished and len(pieces) == len(last.outputs[0].token_ids)
    assert "".join(pieces) == last.outputs[0].text
    assert last.outputs[0].text == default_llm.generate([ids], params)[0].outputs[0].text
