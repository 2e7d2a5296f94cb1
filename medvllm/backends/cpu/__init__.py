"""The CPU backend: native C kernels and their one typed binding."""
