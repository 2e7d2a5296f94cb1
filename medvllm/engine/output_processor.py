"""After each step: append sampled tokens, detokenize, apply stop rules, build RequestOutputs."""

from __future__ import annotations

import time

import torch

from medvllm.engine.sequence import Sequence
from medvllm.outputs import CompletionOutput, RequestOutput


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def append(self, seq: Sequence, token_id: int, logprobs_row: torch.Tensor | None, now: float) -> bool:
        """Adds one token to seq; returns True when the sequence is now finished."""
        seq.append_token(token_id)
        if seq.grammar is not None:
            seq.grammar.sync(seq.token_ids, seq.num_prompt_tokens)
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = now
        if seq.logprobs is not None and logprobs_row is not None:
            self._record_logprobs(seq, token_id, logprobs_row)
        p = seq.params
        if not p.ignore_eos and token_id in self.eos_token_ids:
            seq.finish_reason, seq.stop_reason, seq.ends_with_stop_token = "stop", None, True
        elif token_id in p.stop_token_ids:
            seq.finish_reason, seq.stop_reason, seq.ends_with_stop_token = "stop", token_id, True
        elif seq.grammar is not None and seq.grammar.is_done:  # complete, nothing may follow
            seq.finish_reason, seq.stop_reason = "stop", None
        elif p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens:
            seq.finish_reason = "length"
        elif len(seq) >= self.max_model_len:
            seq.finish_reason = "length"
        if seq.params.stop_strings or seq.stream:
            self._detokenize(seq)
        return seq.finish_reason is not None

    @staticmethod
    def _record_logprobs(seq: Sequence, token_id: int, row: torch.Tensor) -> None:
        n = seq.params.logprobs
        entry = {token_id: float(row[token_id])}
        if n:
            values, ids = row.topk(n)
            entry.update({int(i): float(v) for i, v in zip(ids, values)})
        seq.logprobs.append(entry)
        seq.cumulative_logprob += entry[token_id]

    def _detokenize(self, seq: Sequence) -> None:
        ids = seq.output_token_ids
        if seq.ends_with_stop_token:
            ids = ids[:-1]  # the eos / stop token is not part of the text
        text = self.tokenizer.decode(ids, skip_special_tokens=seq.params.skip_special_tokens)
        stops = seq.params.stop_strings
        if stops:
            search_from = max(0, len(seq.text) - max(len(s) for s in stops))
            hits = [(text.find(s, search_from), s) for s in stops]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                i, s = min(hits)
                text = text[:i]
                seq.finish_reason, seq.stop_reason = "stop", s
        seq.text = text

    @staticmethod
    def error_output(seq: Sequence, error: Exception) -> RequestOutput:
        """The final output of a request whose step failed: what it had so far, finish_reason 'error'.
        Nothing is detokenized here, in case the tokenizer is what failed."""
        delta_ids = seq.output_token_ids[seq.tokens_sent :]
        completion = CompletionOutput(
            index=0,
            text=seq.text,
            token_ids=list(seq.output_token_ids),
            finish_reason="error",
            logprobs=seq.logprobs,
            cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
            delta_text=seq.text[seq.text_sent :],
            delta_token_ids=delta_ids,
        )
        seq.metrics.finished_time = seq.metrics.finished_time or time.time()
        prompt_ids = seq.token_ids[: seq.num_prompt_tokens]
        return RequestOutput(seq.request_id, seq.prompt, prompt_ids, [completion], True, seq.metrics, error=error)

    def make_output(self, seq: Sequence, finished: bool) -> RequestOutput:
        if finished and not (seq.params.stop_strings or seq.stream):
            self._detokenize(seq)
        text = seq.text
        # while streaming, hold back an unfinished UTF-8 character and a possible stop-string prefix
        safe_end = len(text)
        if not finished:
            if text.endswith("\ufffd"):
                safe_end = len(text.rstrip("\ufffd"))
            if seq.params.stop_strings:
                safe_end = min(safe_end, len(text) - max(len(s) for s in seq.params.stop_strings) + 1)
        safe_end = max(safe_end, seq.text_sent)
        delta = text[seq.text_sent : safe_end]
        seq.text_sent = safe_end
        delta_ids = seq.output_token_ids[seq.tokens_sent :]
        seq.tokens_sent = seq.num_output_tokens
        completion = CompletionOutput(
            index=0,
            text=text if finished else text[:safe_end],
            token_ids=list(seq.output_token_ids),
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            logprobs=seq.logprobs,
            cumulative_logprob=seq.cumulative_logprob if seq.logprobs is not None else None,
            delta_text=delta,
            delta_token_ids=delta_ids,
        )
        if finished and seq.metrics.finished_time is None:
            seq.metrics.finished_time = time.time()
        return RequestOutput(
            seq.request_id, seq.prompt, seq.token_ids[: seq.num_prompt_tokens], [completion], finished, seq.metrics
        )
