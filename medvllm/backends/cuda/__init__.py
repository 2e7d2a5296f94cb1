"""The CUDA backend: flash attention (flash-attn's kernels, or PyTorch SDPA held to its flash kernel)."""
