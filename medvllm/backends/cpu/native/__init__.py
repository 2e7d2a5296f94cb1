"""C kernels for CPU, compiled for this machine at first use (build.py), called through binding.py."""
