"""Grammars: compiles a request's constraint with llguidance against the engine's tokenizer, once per
distinct constraint (an LRU cache), and hands each sequence its own matcher.

Thread-safe: the server compiles on a worker thread before queueing (a large schema must not hold up the
engine loop), and the engine's add_request then finds the grammar in the cache.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict

from medvllm.errors import RequestError
from medvllm.structured.params import StructuredOutputsParams
from medvllm.structured.state import GrammarState

# Compact JSON with one space after ',' and ':' (as json.dumps writes it) and no other whitespace: free
# whitespace lets a sampled run pad with newlines until max_tokens. A schema's "x-guidance" overrides it.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHE_SIZE = 256  # compiled grammars kept (a clinical service uses a few schemas, over and over)


class Grammars:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int], cache_size: int = CACHE_SIZE):
        """`tokenizer`: the engine's fast tokenizer (ours or transformers'); `vocab_size`: the width of the logits."""
        self._hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._ll_tokenizer = None
        self._cache: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.num_compiled = 0  # cache misses, for tests and the benchmark

    @property
    def ll_tokenizer(self):
        """llguidance's view of the vocabulary: ~0.5 s to build on the default model, so only when first needed."""
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = self._build_ll_tokenizer()
            return self._ll_tokenizer

    def _build_ll_tokenizer(self):
        # what llguidance.hf.from_tokenizer does, minus its transformers import: the fast tokenizer's
        # backend serialized without padding or truncation
        import llguidance

        backend = getattr(self._hf_tokenizer, "backend_tokenizer", None)
        try:
            if backend is None:
                raise ValueError("Only fast tokenizers are supported")
            if backend.padding is not None or backend.truncation is not None:
                backend = copy.copy(backend)
                backend.no_padding()
                backend.no_truncation()
            eos = self.eos_token_ids or self._hf_tokenizer.eos_token_id
            return llguidance.LLTokenizer(backend.to_str(), n_vocab=self.vocab_size, eos_token=eos)
        except ValueError as e:  # a slow tokenizer, or one whose decoder llguidance does not know
            raise RequestError(
                f"structured outputs cannot run on this model: llguidance cannot read its tokenizer "
                f"({_one_line(e)}); serve the request without a constraint, or use a model with a "
                "byte-level fast tokenizer"
            ) from None

    def compile(self, spec: StructuredOutputsParams):
        """The matcher in its start state for `spec` (from the cache when seen before); a RequestError
        naming the problem when the schema, regex or grammar is invalid or uses what cannot be enforced."""
        key = spec.key()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        template = self._build(spec)
        with self._lock:
            self._cache[key] = template
            self.num_compiled += 1
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return template

    def state_for(self, spec: StructuredOutputsParams) -> GrammarState:
        """A sequence's own matcher: a copy of the compiled start state (n > 1: one copy per choice)."""
        return GrammarState(self.compile(spec).deep_copy())

    def _build(self, spec: StructuredOutputsParams):
        import llguidance

        kind = spec.kind
        try:
            grammar = _grammar_text(llguidance, spec)
        except ValueError as e:
            raise RequestError(f"structured_outputs.{kind} is invalid: {_one_line(e)}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer)
        if is_error:
            raise RequestError(f"structured_outputs.{kind} is invalid: {_one_line(messages[0])}: {_FIX[kind]}")
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise RequestError(f"structured_outputs.{kind} is invalid: {_one_line(matcher.get_error())}: {_FIX[kind]}")
        return matcher


def _grammar_text(llguidance, spec: StructuredOutputsParams) -> str:
    kind = spec.kind
    if kind in ("json", "json_object"):
        schema = {"type": "object"} if kind == "json_object" else spec.json
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    if kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.regex)
    if kind == "choice":
        # each choice a literal: Lark's string syntax is JSON's
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choice))
    return llguidance.grammar_from("grammar", spec.grammar)  # Lark, or GBNF converted to Lark


_FIX = {
    "json": "fix the schema, or drop the keywords named (they cannot be enforced, so they are refused, not ignored)",
    "json_object": "report this as a bug",
    "regex": "fix the regular expression (Rust regex syntax, no look-around or back-references)",
    "choice": "give plain strings",
    "grammar": "fix the grammar (Lark syntax, or llama.cpp's GBNF)",
}


def _one_line(message) -> str:
    return " ".join(str(message).split())
