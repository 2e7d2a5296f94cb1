"""HardwareInfo: a plain snapshot of what this machine can do, and detect(), the only probe.

Everything that depends on the hardware (Config validation, profile auto-selection, the CLI's
`profiles select`) takes a HardwareInfo, so tests pass a fake one and get a deterministic answer.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
from dataclasses import asdict, dataclass, field, replace

# CPU flags (as /proc/cpuinfo spells them) that give native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Optional packages the backends use; detect() records whether each is importable.
OPTIONAL_BACKENDS = ("bitsandbytes", "flash_attn")
# The quantization methods medvllm.quantization implements (its METHODS; a test keeps the two equal).
# Listed here so that probing the machine never imports the code that computes.
ENGINE_QUANTIZATION_METHODS = frozenset({"dynamic", "gguf", "bnb-8bit", "bnb-nf4"})


@dataclass(frozen=True)
class GPUInfo:
    name: str
    capability: tuple[int, int]  # CUDA compute capability (SM major, minor)
    total_memory: int  # bytes

    @property
    def sm(self) -> int:
        return self.capability[0]


@dataclass(frozen=True)
class HardwareInfo:
    cpu_count: int = 1
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()
    total_memory: int = 0  # system RAM, bytes
    available_memory: int = 0  # system RAM free for use now, bytes
    gpus: tuple[GPUInfo, ...] = ()
    backends: dict[str, bool] = field(default_factory=dict, hash=False)
    # quantization methods this install of the engine implements; None: not probed, assume all
    quantization_methods: frozenset[str] | None = None
    # machines in this launch: WORLD_SIZE / LOCAL_WORLD_SIZE under torchrun, else 1
    launch_nodes: int = 1

    # --- what the rest of the code asks -------------------------------------------------------------
    @property
    def has_cuda(self) -> bool:
        return bool(self.gpus)

    @property
    def num_gpus(self) -> int:
        return len(self.gpus)

    @property
    def launch_gpus(self) -> int:
        """GPUs across every machine of this launch (each node is assumed to have this one's)."""
        return self.num_gpus * self.launch_nodes

    @property
    def min_gpu_memory(self) -> int:
        return min((g.total_memory for g in self.gpus), default=0)

    @property
    def min_gpu_sm(self) -> int:
        return min((g.sm for g in self.gpus), default=0)

    @property
    def cpu_native_bf16(self) -> bool:
        return any(f in self.cpu_flags for f in BF16_CPU_FLAGS)

    def has_backend(self, name: str) -> bool:
        return bool(self.backends.get(name, False))

    def engine_implements(self, quantization_method: str) -> bool:
        return self.quantization_methods is None or quantization_method in self.quantization_methods

    def cpu_only(self) -> HardwareInfo:
        """The same machine as seen by a run pinned to the CPU."""
        return replace(self, gpus=())

    def summary(self) -> str:
        ram = f"{self.total_memory / 2**30:.1f} GiB RAM"
        cpu = f"{self.cpu_count} CPU cores{' (native bf16)' if self.cpu_native_bf16 else ''}"
        if not self.gpus:
            return f"{cpu}, {ram}, no CUDA GPU"
        g = self.gpus[0]
        gpus = f"{self.num_gpus}x {g.name} (SM {g.capability[0]}.{g.capability[1]}, {g.total_memory / 2**30:.1f} GiB)"
        return f"{cpu}, {ram}, {gpus}"

    # --- plain data in and out (for --json output and fake hardware in tests) -----------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["cpu_flags"] = sorted(self.cpu_flags)
        d["gpus"] = [dict(asdict(g), capability=list(g.capability)) for g in self.gpus]
        d["cpu_native_bf16"] = self.cpu_native_bf16
        if self.quantization_methods is not None:
            d["quantization_methods"] = sorted(self.quantization_methods)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> HardwareInfo:
        gpus = tuple(
            GPUInfo(
                name=g.get("name", "GPU"),
                capability=tuple(g.get("capability", (8, 0))),
                total_memory=int(g.get("total_memory", 0)),
            )
            for g in d.get("gpus", ())
        )
        return cls(
            cpu_count=int(d.get("cpu_count", 1)),
            cpu_model=d.get("cpu_model", ""),
            cpu_flags=frozenset(d.get("cpu_flags", ())),
            total_memory=int(d.get("total_memory", 0)),
            available_memory=int(d.get("available_memory", d.get("total_memory", 0))),
            gpus=gpus,
            backends=dict(d.get("backends", {})),
            quantization_methods=None
            if d.get("quantization_methods") is None
            else frozenset(d["quantization_methods"]),
        )


# --- the probe -----------------------------------------------------------------------------------------
def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def _read_meminfo() -> tuple[int, int]:
    total = avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                kib = int(value.split()[0]) * 1024 if value.split() else 0
                if key == "MemTotal":
                    total = kib
                elif key == "MemAvailable":
                    avail = kib
    except (OSError, ValueError):
        pass
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
    return total, avail or total


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _probe_gpus() -> tuple[GPUInfo, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPUInfo(name=p.name, capability=(p.major, p.minor), total_memory=int(p.total_memory)))
    return tuple(gpus)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _engine_quantization_methods() -> frozenset[str]:
    """What this install implements: ENGINE_QUANTIZATION_METHODS, or nothing when `medvllm.quantization` is
    absent (found, not imported)."""
    return ENGINE_QUANTIZATION_METHODS if _importable("medvllm.quantization") else frozenset()


@functools.lru_cache(maxsize=1)
def detect() -> HardwareInfo:
    """Probe this machine once (cached): CPU, RAM, CUDA devices, optional backends."""
    model, flags = _read_cpuinfo()
    total, avail = _read_meminfo()
    return HardwareInfo(
        cpu_count=_cpu_count(),
        cpu_model=model,
        cpu_flags=flags,
        total_memory=total,
        available_memory=avail,
        gpus=_probe_gpus(),
        backends={name: _importable(name) for name in OPTIONAL_BACKENDS},
        quantization_methods=_engine_quantization_methods(),
        launch_nodes=_launch_nodes(),
    )


def _launch_nodes() -> int:
    """Nodes of a torchrun launch: a tensor-parallel group may span them."""
    try:
        world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return 1
    return max(1, world // local) if local > 0 else 1
