"""The command line: `python -m medvllm.cli` or `medvllm` (inference, profiles)."""
