# The two commands of the README: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install  ## start the gateway on the embedded SQLite default
	$(BIN)/code-hero serve

lint: install  ## ruff, mypy and the layer contracts of pyproject.toml
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	PYTHONPATH=src $(BIN)/lint-imports

# The suite runs on four workers (pytest-xdist), twice the cores of the machines it is
# gated on: much of it waits (servers starting, leases lapsing, PostgreSQL), so two left
# the CPU 38% idle, and four took 523 s against 717 (same machine, back to back).
# `--dist worksteal` lets an idle worker take tests queued on a busy one: durations run
# from milliseconds to 30 s. The tests that stop PostgreSQL itself (marked outage) run
# after, alone. PYTHONDONTWRITEBYTECODE is set on the machines it is gated on: the
# package's bytecode is compiled first, once, for the `code-hero` processes the tests
# start, and pytest runs with the variable unset, so that a process reads the test
# modules' assertion-rewritten bytecode that an earlier one wrote (collecting the suite:
# 17 s of CPU a process, 7 with it).
test: install  ## lint, then the whole suite against the real PostgreSQL
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m compileall -q src
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -m "not outage" -n 4 --dist worksteal --durations=15
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -m outage

bench: install
	$(BIN)/python bench/checkpoints.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
