# Two commands do everything: `make demo` (the main job) and `make test` (lint, types, tests).
# Both create and fill the virtual environment in .venv when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ltpa-installed

.PHONY: demo test test-fast lint typecheck pytest venv clean study

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ltpa demo

# The paired evidence study behind docs/results.md (about 8 h of an idle 2-core CPU, over several sittings:
# each run again continues where the last stopped). Needs Fashion-MNIST (see README).
study: $(STAMP)
	$(BIN)/python -m ltpa.study

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

# The fast lane while editing: lint, types and the tests not marked slow (about a minute on 2 cores).
test-fast: lint typecheck
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
