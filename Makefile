# The README's commands. `make demo` sets up and runs v4 on the built-in tiny model; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # first, so nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c 'from v4cli.runtime import kernels; print(kernels.install())'   # C++ kernels, once
	touch $@

setup: $(VENV)/.installed

# The main job on the built-in tiny model (made on first use, no download): a question about this repository.
# It reads README and the model code (~15K tokens) so the demo takes about a minute on 2 CPU cores.
demo: setup
	$(BIN)/v4 ask --no-think --file README.md --file src/v4cli/runtime/model --max-tokens 48 "How is attention computed here?"

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup
	$(BIN)/python bench/load_memory.py

.PHONY: setup demo test lint bench
