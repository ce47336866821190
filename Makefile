# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create .venv and install the package; Kafka's jars are fetched by Maven on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install prometheus dashboard bench bench-soak bench-bandit bench-controller clean

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

# Prometheus and promtool for the monitoring tests (tests/unit/test_alerts.py,
# tests/integration/test_prometheus.py) when they are not on PATH: Debian's package,
# downloaded and unpacked into ~/.cache/streamer/prometheus (no service is installed).
prometheus:
	bash deploy/prometheus/install.sh >/dev/null

# Regenerates deploy/grafana/dashboards/streamer.json from deploy/grafana/dashboard.py.
dashboard: $(STAMP)
	$(BIN)/python -m deploy.grafana.dashboard

test: lint prometheus
	$(BIN)/pytest

# Contenders (limit, streamer variants, Faust, per-event loop) x3, latency at 25/50/80% load,
# batching sweeps: about 22 minutes on two shared cores. Parts: --contenders, --latency,
# --sweeps (see `python -m benchmarks.throughput --help`). The bench extra brings matplotlib
# (plots) and faust-streaming (the Faust contender).
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.throughput

# The engine at 50% of its measured maximum for 10 minutes, RSS every 10 s.
bench-soak: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.throughput --soak

# The bandit benchmark's plot needs the optional `bench` extra (matplotlib).
bench-bandit: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.bandit

bench-controller: $(STAMP)
	$(BIN)/python -m benchmarks.controller_throughput

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache
