"""The GGUF block kernels (backends/cpu/gguf_matmul.py) against the dynamic int8 and float32 panel kernels,
at the default model's Linear shapes.

    python benchmarks/gguf_kernels.py [--rounds 200] [--hot] [--tokens 1 64] [--threads N] [--parts 2]
                                      [--types Q4_0 Q4_K] [--no-float]

µs per call (median), for one token (decode, memory-bound) and 64 (a batched decode step); each GGUF type
with activations in one int8 part and in two, next to binding.int8_linear (int8 per channel, dynamic
per-token activations) and binding.f32_panels_linear (float32). GB/s is weight bytes over time. By
default each call reads a different copy of the weight (32 MB of copies in all), so weights come from
memory as in a real decode step; --hot reuses one copy (from cache). K-quants need K % 256 == 0, so at
K = 576 they are skipped (GGUF files store such tensors in another type).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medvllm.backends.cpu.int8_linear import pack_int8
from medvllm.backends.cpu.native import binding
from medvllm.quantization.dynamic_int8 import GROUP

SHAPES = [("q,o", 576, 576), ("k,v", 192, 576), ("gate,up", 1536, 576), ("down", 576, 1536)]
HEAD = ("lm_head", 49152, 576)
TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
COPY_BYTES = 32 << 20


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def random_blocks(qtype: int, n: int, k: int, rng) -> torch.Tensor:
    """Random bytes with finite float16 scales: the kernels' speed does not depend on the values."""
    block, size = binding.GGUF_BLOCKS[qtype]
    b = rng.integers(0, 256, (n, k // block, size), dtype=np.uint8)
    at = {12: [0, 2], 13: [0, 2], 14: [208]}.get(qtype, [0, 2] if qtype in (3, 7) else [0])
    for a in at:
        b[..., a : a + 2] = (
            rng.uniform(-0.02, 0.02, (n, k // block)).astype(np.float16).view(np.uint8).reshape(n, -1, 2)
        )
    return torch.from_numpy(b.reshape(n, -1))


def copies(t: torch.Tensor, hot: bool) -> list[torch.Tensor]:
    count = 1 if hot else max(2, COPY_BYTES // (t.numel() * t.element_size()))
    return [t.clone() for _ in range(count)]


def timed(call, weights, rounds: int) -> float:
    for w in weights[:3]:
        call(w)
    times = []
    for i in range(rounds):
        w = weights[i % len(weights)]
        t0 = time.perf_counter()
        call(w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def run_shape(name, n, k, tokens, args, rng, only=None):
    x = torch.randn(tokens, k)
    out = torch.empty(tokens, n)
    rows = []
    threads = args.threads
    w = torch.randn(n, k) * 0.02
    packed, scale, sums = pack_int8(w, GROUP)
    us = timed(
        lambda p: binding.int8_linear(out, x, p, scale, sums, None, GROUP, threads),
        copies(packed, args.hot),
        args.rounds,
    )
    rows.append(("int8 (dynamic)", us, packed.numel()))
    if args.float:
        panels = torch.empty(binding.f32_panels_size(n, k))
        binding.f32_panels_pack(panels, w, threads)
        us = timed(lambda p: binding.f32_panels_linear(out, x, p, None, threads), copies(panels, args.hot), args.rounds)
        rows.append(("float32 panels", us, panels.numel() * 4))
    for tname, qt in TYPES.items():
        if (only and tname not in only) or (args.types and tname not in args.types):
            continue
        if k % binding.GGUF_BLOCKS[qt][0]:
            continue
        blocks = random_blocks(qt, n, k, rng)
        for parts in args.parts:
            us = timed(
                lambda b, qt=qt, p=parts: binding.gguf_linear(out, 0, x, b, qt, p, threads),
                copies(blocks, args.hot),
                args.rounds,
            )
            rows.append((f"{tname} parts={parts}", us, blocks.numel()))
    base = rows[0][1]
    print(f"\n{name}: N={n} K={k}, {tokens} token(s)")
    print(f"  {'kernel':<16} {'µs':>9} {'x int8':>7} {'MB':>7} {'GB/s':>7}")
    for label, us, nbytes in rows:
        print(f"  {label:<16} {us:9.1f} {us / base:7.2f} {nbytes / 1e6:7.3f} {nbytes / us / 1e3:7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--types", nargs="+", choices=list(TYPES), help="GGUF types to run (default: all)")
    ap.add_argument("--no-float", dest="float", action="store_false", help="skip the float32 panels")
    ap.add_argument("--hot", action="store_true", help="one copy of each weight: read from cache")
    args = ap.parse_args()
    binding.library()
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_model()}; {args.threads} threads; weights {'from cache' if args.hot else 'from memory'}")
    for tokens in args.tokens:
        for name, n, k in SHAPES:
            run_shape(name, n, k, tokens, args, rng)
        run_shape(*HEAD, tokens, args, rng, only={"Q8_0"})


if __name__ == "__main__":
    main()
