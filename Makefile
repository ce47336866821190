# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv and install the package; Kafka's jars are fetched by Maven on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install bench bench-bandit bench-controller clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamer demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.throughput

# The bandit benchmark's plot needs the optional `bench` extra (matplotlib).
bench-bandit: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.bandit

bench-controller: $(STAMP)
	$(BIN)/python -m benchmarks.controller_throughput

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache
