"""Backends: which implementation each part of the model runs on (select.py), and the device-specific
code behind them (cpu/: the native C kernels and their layers)."""
