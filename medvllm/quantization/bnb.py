"""bitsandbytes 8-bit (LLM.int8 with outlier decomposition) and 4-bit NF4 weights, for CUDA.

Each Linear's float weight is handed to a bitsandbytes layer, which quantizes it when moved to the
weight's device; the float weight is then freed. The bitsandbytes layer is the Linear's packed form,
held in a plain wrapper out of the module tree (like the rotary table), so casts and parameter walks
over the model never touch its packed storage. The bias stays ours, in the run dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medvllm.errors import ConfigError
from medvllm.layers.linear import LinearBase, LinearMethod

OUTLIER_THRESHOLD = 6.0  # LLM.int8(): input columns above this magnitude run in 16-bit (the paper's value)


def _bnb(method: str):
    try:
        import bitsandbytes
    except Exception as e:  # ImportError, or a broken CUDA set-up reported at import
        raise ConfigError(
            f"quantization_method={method!r} needs the bitsandbytes package, which cannot be "
            f"imported here ({type(e).__name__}: {e}): pip install 'medvllm[bnb]', or drop "
            "quantization"
        ) from None
    return bitsandbytes


@dataclass(frozen=True)
class BnbLinear:
    module: torch.nn.Module  # a bitsandbytes Linear holding the quantized weight


class _BnbMethod(LinearMethod):
    config_name = ""
    frees_weight = True
    packs_from_host = True  # the float weight never needs the GPU: it is quantized on its way there

    def __init__(self, device: torch.device | str = "cuda"):
        self.bnb = _bnb(self.config_name)
        self.device = torch.device(device)

    def pack(self, layer: LinearBase) -> BnbLinear:
        weight = layer.weight.detach()
        module = self._build(layer.in_features, layer.out_features, weight.dtype)
        module.weight = self._params(weight)
        return BnbLinear(module.to(self.device))  # quantizes here

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        out = layer.packed.module(x)
        if layer.bias is not None:
            out = out + layer.bias
        return out

    def _build(self, n_in: int, n_out: int, dtype: torch.dtype):
        raise NotImplementedError

    def _params(self, weight: torch.Tensor):
        raise NotImplementedError


class Bnb8bitMethod(_BnbMethod):
    name = "bnb-8bit"
    config_name = "bnb-8bit"

    def _build(self, n_in, n_out, dtype):
        return self.bnb.nn.Linear8bitLt(
            n_in, n_out, bias=False, has_fp16_weights=False, threshold=OUTLIER_THRESHOLD, device="cpu"
        )

    def _params(self, weight):
        # bitsandbytes quantizes an Int8Params only on its way from the CPU to a device
        return self.bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)


class BnbNf4Method(_BnbMethod):
    name = "bnb-nf4"
    config_name = "bnb-nf4"

    def _build(self, n_in, n_out, dtype):
        return self.bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=dtype, quant_type="nf4", device="cpu")

    def _params(self, weight):
        return self.bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
