"""Observes an engine without changing it: records each step's sequences and last-position logits."""
from __future__ import annotations


class LogitsRecorder:
    """Wraps runner.run and model.compute_logits; `steps` is a list of (request ids, logits [B, V])."""

    def __init__(self, engine):
        self.steps: list[tuple[list[str], "torch.Tensor"]] = []
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


def check_against_hf(model, llm, prompts, decode_steps: int = 8, tol: float = 1e-4):
    """Greedy-generate `prompts` and compare every step's logits with transformers' on the same tokens."""
    from medvllm import SamplingParams
    recorder = LogitsRecorder(llm.engine)
    params = SamplingParams(temperature=0, max_tokens=decode_steps + 1, ignore_eos=True)
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        ours = recorder.logits_of(out.request_id)
        full = prompt + out.outputs[0].token_ids[:-1]
        ref = hf_logits(model, full)[len(prompt) - 1:]
        assert ours.shape == ref.shape
        diff = (ours - ref).abs().max().item()
        assert diff < tol, f"max-abs logits difference {diff:.2e}"
    return outs
