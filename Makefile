# One entry point. `make demo` runs the main job, `make test` the whole test suite;
# both create or refresh the virtualenv in $(VENV) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lint bench clean

venv: $(VENV)/.installed

# Refreshed whenever pyproject.toml changes. torch==2.13.0 is the CPU wheel: an
# unpinned torch would pull several GB of CUDA packages, so it is installed first
# and only when no torch is present (pyproject keeps torch>=2.1 for users).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(VENV)/bin/shardcache demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow and not faults and not soak" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: venv
	$(VENV)/bin/shardcache bench

clean:
	rm -rf $(VENV) .venv-peers bench-out .pytest_cache .mypy_cache .ruff_cache
