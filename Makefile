# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# CPU machines take the local CPU build of torch first, so no dependency drags in CUDA wheels.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,verl-cpu]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(BIN)/rlvr pipeline experiment=demo output_dir=outputs/demo
	@echo "Report: $(CURDIR)/outputs/demo/report.md"

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not slurm" $(PYTEST_ARGS)

# where the benchmarks' synthetic ~120M-parameter trajectory is built once (~5 GB)
BENCH_DIR ?= /tmp/rlvr-bench

bench: venv
	$(BIN)/python scripts/bench_linearity.py $(BENCH_DIR)
	$(BIN)/python scripts/bench_extrapolation.py $(BENCH_DIR)
	$(BIN)/python scripts/bench_grading.py
	$(BIN)/python scripts/bench_sandbox.py
	$(BIN)/python scripts/bench_logits_extrapolation.py

clean:
	rm -rf $(VENV) outputs logs multirun .cache
