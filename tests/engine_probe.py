"""Observes an engine without changing it: records each step's sequences and last-position logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class LogitsRecorder:
    """Wraps runner.run and model.compute_logits; `steps` is a list of (request ids, logits [B, V])."""

    def __init__(self, engine):
        self.steps: list[tuple[list[str], torch.Tensor]] = []
        runner = engine.runner
        run, compute = runner.run, runner.model.compute_logits
        current: list[list[str]] = [[]]

        def run_and_note(seqs, is_prefill):
            from medvllm.engine.step_inputs import samples

            current[0] = [s.request_id for s in seqs if samples(s, is_prefill)]
            return run(seqs, is_prefill)

        def compute_and_record(hidden):
            logits = compute(hidden)
            self.steps.append((current[0], logits.detach().float().clone()))
            return logits

        runner.run = run_and_note
        runner.model.compute_logits = compute_and_record

    def logits_of(self, request_id: str):
        """[steps, V]: the logits each step produced for one request, in order."""
        import torch

        rows = [logits[ids.index(request_id)] for ids, logits in self.steps if request_id in ids]
        return torch.stack(rows)


def hf_logits(model, token_ids: list[int]):
    """transformers' logits [T, V] for one sequence, in float32."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def check_against_hf(model, llm, prompts, decode_steps: int = 8, tol: float = 1e-4, relative: bool = False):
    """Greedy-generate `prompts` and compare every step's logits with transformers' on the same tokens:
    max-abs difference below `tol`, or with `relative` below `tol` per unit of the largest logit (at
    least 1), for long prompts, whose float32 rounding grows with the values summed."""
    from medvllm import SamplingParams

    recorder = LogitsRecorder(llm.engine)
    params = SamplingParams(temperature=0, max_tokens=decode_steps + 1, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        ours = recorder.logits_of(out.request_id)
        full = prompt + out.outputs[0].token_ids[:-1]
        ref = hf_logits(model, full)[len(prompt) - 1 :]
        assert ours.shape == ref.shape
        gap = (ours - ref).abs()
        diff, scale = gap.max().item(), max(1.0, ref.abs().max().item()) if relative else 1.0
        step, largest = int(gap.max(dim=1).values.argmax()), ref.abs().max().item()
        where = f"step {step} of {len(ref)}, prompt of {len(prompt)} tokens, logits up to {largest:.2f}"
        assert diff < tol * scale, f"max-abs logits difference {diff:.2e} > {tol * scale:.2e} ({where}) on {_host()}"
    return outs


def _host() -> str:
    """The CPU, for a failure message: tolerances are about rounding, which differs between hosts."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    import torch

    return f"{model or platform.processor() or platform.machine()}, torch {torch.backends.cpu.get_cpu_capability()}"
