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
            current[0] = [s.request_id for s in seqs]
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
