"""llama.cpp's own KL divergence on the shipped clinical texts: the peer's figures for docs/QUALITY.md.

    bash benchmarks/peers/llama_cpp.sh                 # builds llama-perplexity and llama-quantize too
    python benchmarks/llama_cpp_quality.py [--model FILE.gguf] [--requant Q8_0] [--chunk 128]

The base is the model file requantized to F32 (`llama-quantize --allow-requantize FILE base.gguf F32`),
scored by `llama-perplexity --kl-divergence-base`; each candidate (the file itself, then every
--requant type made from it) is scored against it with `--kl-divergence`. llama-perplexity cuts the
texts (joined with blank lines) into chunks of --chunk tokens and scores the second half of each. Prints
mean KL and "same top" (top-1 agreement) per candidate, and the commands, with the CPU line. Files go
to the bench cache (~/.cache/medvllm-bench), never the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from importlib.resources import files

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from common import cache_dir, cpu_summary  # noqa: E402
from llama_cpp import bin_dir  # noqa: E402

MEAN_KLD = re.compile(r"Mean\s+KLD:\s+([0-9.eE+-]+)")
SAME_TOP = re.compile(r"Same top p:\s+([0-9.]+)")


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{os.path.basename(cmd[0])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout + done.stderr


def texts_file(folder: str) -> str:
    path = os.path.join(folder, "clinical_texts.txt")
    rows = files("medvllm.quality").joinpath("data/clinical_texts.jsonl").read_text(encoding="utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(json.loads(line)["text"] for line in rows if line.strip()))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a .gguf file (default: the embedded model)")
    ap.add_argument("--requant", default="Q8_0", help="comma list of types to requantize the file to and score")
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tools = bin_dir()
    if tools is None or not os.path.exists(os.path.join(tools, "llama-perplexity")):
        sys.exit("llama-perplexity is not built: run bash benchmarks/peers/llama_cpp.sh")
    from medvllm.loader import default_model_path

    model = args.model or default_model_path()
    folder = os.path.join(cache_dir(), "quality")
    os.makedirs(folder, exist_ok=True)
    texts = texts_file(folder)
    stem = os.path.splitext(os.path.basename(model))[0]
    base, kld = os.path.join(folder, f"{stem}.F32.gguf"), os.path.join(folder, f"{stem}.kld")
    quantize, perplexity = os.path.join(tools, "llama-quantize"), os.path.join(tools, "llama-perplexity")
    common = ["-f", texts, "-c", str(args.chunk), "-t", str(args.threads)]
    run([quantize, "--allow-requantize", model, base, "F32"])
    run([perplexity, "-m", base, *common, "--kl-divergence-base", kld])
    candidates = [("the file itself", model)]
    for qtype in filter(None, args.requant.split(",")):
        path = os.path.join(folder, f"{stem}.{qtype}.gguf")
        run([quantize, "--allow-requantize", base, path, qtype])
        candidates.append((f"requantized to {qtype}", path))
    rows = []
    for label, path in candidates:
        out = run([perplexity, "-m", path, *common, "--kl-divergence-base", kld, "--kl-divergence"])
        kl, top = MEAN_KLD.search(out), SAME_TOP.search(out)
        rows.append((label, kl.group(1) if kl else "?", top.group(1) if top else "?"))
    print(f"\nmachine: {cpu_summary()}; {args.threads} threads; {os.path.basename(model)}; chunks of {args.chunk}\n")
    print("| llama.cpp on | mean KL | same top token |\n|---|---:|---:|")
    for label, kl, top in rows:
        print(f"| {label} | {kl} | {top}% |")


if __name__ == "__main__":
    main()
