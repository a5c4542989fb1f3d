# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints-cpu.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup test demo bench clean help

help:
	@echo "make setup  - create $(VENV) and install vidllm with dev + pipeline extras (CPU torch pinned)"
	@echo "make test   - run the test suite"
	@echo "make demo   - generate a synthetic ScanNet-format dataset and run the pipeline on it"
	@echo "make bench  - run the performance scripts in benchmarks/"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# The stamp re-runs the install whenever pyproject or the constraints change.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install -c $(CONSTRAINTS) -e ".[dev,pipeline,viewer]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q --durations=15 tests

demo: setup
	$(BIN)/python -m flows.demo --out demo_out

bench: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf demo_out .pytest_cache
