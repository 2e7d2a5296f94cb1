"""A Gemma 3 multimodal checkpoint (MedGemma 4B's shape) serves its language model: text logits equal
transformers' Gemma3ForConditionalGeneration on text-only input; the vision tower stays on disk."""

from __future__ import annotations

import json

import torch
import transformers

from medvllm import LLM
from tests.engine_probe import check_against_hf
from tests.models.test_parity import prompts_of
from tests.tiny_models import BASE, GEMMA_ARCHS, tiny_tokenizer

TEMPLATE = "{% for m in messages %}<start_of_turn>{{ m['role'] }} {{ m['content'] }}<end_of_turn>{% endfor %}"


def build_multimodal(folder) -> transformers.Gemma3ForConditionalGeneration:
    text = BASE | GEMMA_ARCHS["gemma3"][1]
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision | {"patch_size": 14}, mm_tokens_per_image=4, image_token_index=5
    )
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():  # as build_tiny: clear logit differences, and Gemma's (1 + w) norms exercised
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
            elif "norm" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with open(folder / "chat_template.json", "w") as f:  # where a processor keeps it
        json.dump({"chat_template": TEMPLATE}, f)
    return model


def test_multimodal_checkpoint_runs_its_language_model_as_transformers_does(tmp_path):
    model = build_multimodal(tmp_path)
    llm = LLM(str(tmp_path), kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256)
    assert llm.runtime_info()["architecture"] == "Gemma3ForCausalLM"
    check_against_hf(model, llm, prompts_of([5, 17, 33], seed=4), decode_steps=6, tol=1e-4, relative=True)
    assert llm.tokenizer.chat_template == TEMPLATE
    loaded = {name for name, _ in llm.engine.source.iter_weights()}
    assert loaded and not any("vision" in n or "projector" in n for n in loaded)
