"""Peak memory while loading the default model's weights, against the size of the loaded model.

For each configuration, in a fresh process: RSS when the weights' stream starts (the tokenizer and the
model config already read), the peak from there until `LLM(...)` is ready (VmHWM), and the bytes of
every tensor the loaded model holds (weights, int8 tables, scales, rotary tables; each storage once).
The KV pool is kept to a few blocks so that it does not count.

    python benchmarks/load_peak.py [--json FILE]

Prints one markdown table: peak above the imports, model bytes, and their ratio (the memory_efficient
target: at most 1.3x the loaded model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CONFIGS = {  # name -> LLM keyword arguments
    "float32 + memory_efficient": {"deployment_profile": "none", "memory_efficient": True},
    "edge_cpu_int8 (memory_efficient)": {"deployment_profile": "edge_cpu_int8"},
    "cpu (int8)": {"deployment_profile": "cpu"},
}
TARGET = 1.3


def status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}: this benchmark needs Linux")


def tensor_bytes(root) -> int:
    """Bytes of the distinct tensor storages reachable from a module tree (parameters, buffers and
    plain tensor attributes, as the int8 layers keep their tables)."""
    import torch

    seen: dict[int, int] = {}

    def visit(obj, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(obj, torch.Tensor):
            try:
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
            except NotImplementedError:  # an oneDNN-packed weight (the float32 LM head): its own copy
                seen[-id(obj)] = obj.numel() * obj.element_size()
        elif isinstance(obj, torch.nn.Module):
            for value in list(obj._parameters.values()) + list(obj._buffers.values()):
                visit(value, depth)
            for child in obj.children():
                visit(child, depth)
            for name, value in vars(obj).items():
                if not name.startswith("_"):
                    visit(value, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value, depth + 1)
        elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("medvllm"):
            for value in vars(obj).values():
                visit(value, depth + 1)

    visit(root, 0)
    return sum(n for key, n in seen.items() if key)


def child(name: str) -> dict:
    import warnings

    import transformers  # noqa: F401  (the tokenizer's import, not the load's)

    import medvllm.engine.model_runner as model_runner
    from medvllm import LLM

    imported = status_mib("VmRSS")
    marks = {}
    build = model_runner.build_model

    def build_model(*args, **kwargs):  # the weights' load: from here to the model in place
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM restarts from the current RSS (Linux >= 4.0)
        marks["before"] = status_mib("VmRSS")
        return build(*args, **kwargs)

    model_runner.build_model = build_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llm = LLM(num_kvcache_blocks=8, max_model_len=128, **CONFIGS[name])
    return {
        "name": name,
        "imported_mib": imported,
        "before_mib": marks["before"],
        "peak_mib": status_mib("VmHWM"),
        "after_mib": status_mib("VmRSS"),
        "model_mib": tensor_bytes(llm.engine.runner.model) / 2**20,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    rows = []
    for name in CONFIGS:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", name], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        "| configuration | tokenizer and model config MiB | weights' load: peak above its start | kept | "
        "model tensors MiB | peak / model |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        r["ratio"] = (r["peak_mib"] - r["before_mib"]) / r["model_mib"]
        print(
            f"| {r['name']} | {r['before_mib'] - r['imported_mib']:.0f} | {r['peak_mib'] - r['before_mib']:.0f} | "
            f"{r['after_mib'] - r['before_mib']:.0f} | {r['model_mib']:.0f} | {r['ratio']:.2f}x |"
        )
    print(f"\nmemory_efficient target: peak <= {TARGET}x the loaded model")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
