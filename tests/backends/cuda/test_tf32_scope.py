"""TF32 and cuDNN benchmark are process-wide torch flags: an engine sets what it asked for only while it
runs a step (ModelRunner.run / score) and puts back what was there, so a second engine in the process
(quality compare's float32 reference) never runs under the first one's TF32.

Runs on CPU: the flags are settable on a CPU-only build, and the engines' runners are given what a CUDA
engine asks for (a CPU engine asks for nothing and leaves the flags alone)."""

import warnings

import pytest
import torch

from medvllm import LLM, SamplingParams
from medvllm.config import Config, ConfigWarning
from medvllm.engine.precision import backend_scope, current_flags, engine_flags
from medvllm.hardware import GPUInfo, HardwareInfo
from tests.tiny_models import build_tiny

GPU = HardwareInfo(cpu_count=2, gpus=(GPUInfo("A100", (8, 0), 80 << 30),))
CUDA = torch.device("cuda")
SMALL = dict(max_model_len=64, num_kvcache_blocks=16, max_num_batched_tokens=64, max_num_seqs=4)


@pytest.fixture(autouse=True)
def restore_flags():
    saved = current_flags()
    yield
    _set(saved)  # leave the process as found, whatever a test did


def _set(flags: dict) -> None:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = flags["matmul"]
        torch.backends.cudnn.conv.fp32_precision = flags["conv"]
    else:
        torch.backends.cuda.matmul.allow_tf32 = flags["matmul"]
        torch.backends.cudnn.allow_tf32 = flags["conv"]
    torch.backends.cudnn.benchmark = flags["benchmark"]


def _tf32() -> bool:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision == "tf32"
    return torch.backends.cuda.matmul.allow_tf32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    build_tiny("llama", path)
    return str(path)


def _engine(folder, allow_tf32: bool, seen: list):
    """A CPU engine whose runner asks for what the same Config asks on CUDA; records the flags its model
    runs under."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)  # allow_tf32 does nothing on this CPU engine
        llm = LLM(folder, allow_tf32=allow_tf32, **SMALL)
    asked = engine_flags(Config(allow_tf32=allow_tf32, hardware=GPU), CUDA)
    llm.engine.runner.backend_flags = asked
    llm.engine.runner.model.register_forward_pre_hook(lambda *_: seen.append((_tf32(), torch.backends.cudnn.benchmark)))
    return llm


def test_each_engine_runs_its_steps_under_its_own_flags_and_restores_them(folder):
    seen_tf32, seen_ref = [], []
    candidate = _engine(folder, True, seen_tf32)
    reference = _engine(folder, False, seen_ref)
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    before = current_flags()
    assert not _tf32()
    candidate.generate([[5, 6, 7]], params)
    assert seen_tf32 and all(s == (True, False) for s in seen_tf32)
    assert current_flags() == before  # nothing left behind for the next engine
    _set({**before, "matmul": "tf32" if hasattr(torch.backends.cuda.matmul, "fp32_precision") else True})
    reference.generate([[5, 6, 7]], params)
    reference.engine.score([5, 6, 7, 8])
    assert seen_ref and all(s == (False, False) for s in seen_ref)  # float32 even with TF32 left on
    assert _tf32()  # and what was there is put back
    assert candidate.runtime_info()["allow_tf32"] is True and reference.runtime_info()["allow_tf32"] is False


def test_a_cpu_engine_asks_for_nothing_and_leaves_the_flags_alone():
    with pytest.warns(ConfigWarning, match="does nothing on cpu"):
        config = Config(device="cpu", allow_tf32=True, hardware=GPU)
    assert engine_flags(config, torch.device("cpu")) == {"allow_tf32": None, "cudnn_benchmark": None}
    before = current_flags()
    with backend_scope(engine_flags(config, torch.device("cpu"))):
        assert current_flags() == before


def test_the_flags_are_restored_when_a_step_fails():
    before = current_flags()
    with pytest.raises(RuntimeError), backend_scope({"allow_tf32": True, "cudnn_benchmark": True}):
        assert _tf32() and torch.backends.cudnn.benchmark
        raise RuntimeError("step failed")
    assert current_flags() == before
