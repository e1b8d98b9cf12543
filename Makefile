# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast lint install install-dev docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -e ".[dev]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install -e ".[docs]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/unseg demo --out demo_out

test: install-dev
	$(PY) -m pytest -q

test-fast: install-dev  # everything but the slow end-to-end runs: about a minute
	$(PY) -m pytest -q -m "not slow"

lint: install-dev  # ruff (lint, then the format check) over the Python files; mypy over src/unseg
	$(PY) -m ruff check src tests benchmarks tools
	$(PY) -m ruff format --check src tests benchmarks tools
	$(PY) -m mypy

docs: $(VENV)/.installed-docs  # the site into site/ (open site/index.html); any warning, e.g. a broken link or reference, fails
	$(PY) -m mkdocs build --strict

bench: install  # CPU benchmarks; on a machine with a GPU also `bash benchmarks/gpu_check.sh`
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_clustering.py
	$(PY) benchmarks/bench_knn.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_stego_data.py
	$(PY) benchmarks/bench_stego_train.py
	$(PY) benchmarks/bench_leopart.py

clean:
	rm -rf demo_out .pytest_cache .mypy_cache .ruff_cache build dist site
