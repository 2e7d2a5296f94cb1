"""C kernels for CPU, compiled for this machine at first use (see build.py)."""
