# Two commands to start (see README):
#   make demo   set up .venv on first use, then prune the built-in DemoNet and check it with both oracles
#   make test   set up .venv on first use, then run the default test suite
# The CPU build of torch is installed first: a bare `torch` requirement would pull the CUDA build.
# torchvision from the registry is a CUDA build: it goes in with --no-deps (fxprune's model loader and the
# tests define the two C-op schemas it needs when, and only when, its import fails for that reason).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fxprune-setup
TORCH ?= torch==2.13.0
TORCHVISION ?= torchvision==0.28.0

.PHONY: demo test test-slow bench setup clean-venv

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps $(TORCHVISION)
	$(PY) -m pip install -q -e '.[test]'
	@$(PY) -c "import torch; assert torch.__version__.startswith('$(subst torch==,,$(TORCH))'), 'torch was replaced: ' + torch.__version__"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fxprune

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/make_benchmarks_md.py

clean-venv:
	rm -rf $(VENV)
