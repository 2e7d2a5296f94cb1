"""The flash profile's KV blocks are whole flash-attn pages, so its paged kernel reads the cache in place
(medvllm/backends/cuda/flash_attention.py) instead of gathering each sequence's blocks in Python."""

from medvllm.backends.cuda.flash_attention import FLASH_ATTN_PAGE
from medvllm.deployment import profiles, schema


def test_the_flash_profile_uses_whole_flash_attn_pages():
    engine = profiles.load("onprem_gpu_bf16_flash", {}).engine
    assert engine["attention_impl"] == "flash"
    assert engine["kvcache_block_size"] % FLASH_ATTN_PAGE == 0


def test_the_schema_allows_it():
    assert schema.check({"engine": {"kvcache_block_size": FLASH_ATTN_PAGE}}) == []
