# Two entry points for a fresh machine: `make figures` (main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/stream-mla: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: setup figures models test lint
setup: $(BIN)/stream-mla

## Main job: the full reproduction (default sweep -> figures -> claims -> report) into results/.
figures: setup
	$(BIN)/stream-mla reproduce -o results

models: setup
	$(BIN)/stream-mla export --reference-set

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2

lint: setup
	$(BIN)/ruff check .
