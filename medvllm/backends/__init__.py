"""Backends: which implementation each part of the model runs on (select.py), and the device-specific
code behind the engine's small interfaces (cpu/: the native C kernels, their typed binding and the
layers that call them; cuda/: flash attention)."""
