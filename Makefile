# Two commands for a newcomer: `make report` and `make test`. Both set up .venv first.
# GPU users pick another torch build, e.g.
#   make test TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
SPEC ?= reports/default.toml
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# one stamp per torch choice, so changing TORCH or TORCH_INDEX re-runs the set-up
STAMP := $(VENV)/.setup-$(shell echo "$(TORCH) $(TORCH_INDEX)" | cksum | cut -d" " -f1)
INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: setup test lint report clean-venv gpu-check

setup: $(STAMP)

# Re-runs only when the project's dependencies or the torch choice change.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)" $(INDEX_ARG)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	rm -f $(VENV)/.setup-*
	echo "$(TORCH) $(TORCH_INDEX)" > $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

report: setup
	$(BIN)/landscape report $(SPEC)

# On a GPU machine (with a CUDA torch build): GPU tests and benches in one table, under 5 minutes.
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py

clean-venv:
	rm -rf $(VENV)
