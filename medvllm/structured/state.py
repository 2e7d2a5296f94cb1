"""GrammarState: one sequence's matcher, kept equal to the output tokens the sequence really has."""

from __future__ import annotations

from medvllm.errors import RequestError


class GrammarState:
    def __init__(self, matcher):
        self.matcher = matcher  # an llguidance.LLMatcher of its own (never shared between sequences)
        self.num_consumed = 0  # output tokens the matcher has seen

    def sync(self, token_ids: list[int], num_prompt_tokens: int) -> None:
        """Feeds the matcher the output tokens it has not seen. The sequence's tokens are the truth: a
        preempted sequence keeps its tokens and is recomputed, so the matcher never has to go back;
        should it be ahead anyway, it restarts and replays them."""
        num_output = len(token_ids) - num_prompt_tokens
        if self.num_consumed > num_output:
            self.matcher.reset()
            self.num_consumed = 0
        if self.num_consumed < num_output:
            new = token_ids[num_prompt_tokens + self.num_consumed :]
            if not self.matcher.consume_tokens(new):
                raise RequestError(
                    f"the output left its grammar ({' '.join(self.matcher.get_error().split())}): "
                    "a token the mask forbade was sampled; report this as a bug"
                )
            self.num_consumed = num_output

    @property
    def is_done(self) -> bool:
        """The grammar is complete and nothing can follow: the request ends here ('stop')."""
        return self.matcher.is_stopped() and not self.matcher.is_error()
