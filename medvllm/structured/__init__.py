"""Structured outputs: a request's output held to a JSON Schema, a regex, a choice or a grammar.

`params` is the request's constraint (no llguidance needed to import it); `compiler.Grammars` compiles
constraints with llguidance and caches them; `masks.MaskBuilder` computes a step's token masks while
the model runs; the Sampler applies them (layers/sampler.py).
"""

from medvllm.structured.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
