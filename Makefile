# liveml: `make run` (the demo) and `make test` both set up .venv/ themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf

.PHONY: run test lint proto venv clean bench bench-worker bench-gateway bench-trainer bench-events bench-online bench-auth bench-registry-scale bench-gateway-before-after

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(BUF): package.json
	npm install --no-fund --no-audit --loglevel=error
	touch $(BUF)

run: $(STAMP)
	$(BIN)/liveml demo

# Two test processes (pytest-xdist): most tests wait on servers and deadlines, not on
# a core, so two share the machine's two cores without slowing each other much.
TEST_WORKERS ?= 2

test: $(STAMP) $(BUF)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services
	$(BUF) lint protos

proto: $(STAMP)
	$(PY) -m services.common.protogen

bench: bench-worker bench-gateway bench-trainer bench-events bench-online bench-auth bench-registry-scale

# Needs h2load (Debian package nghttp2-client, installed here if missing) and builds
# KServe's venv in bench/.kserve-venv on first use.
bench-worker: $(STAMP)
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || sudo apt-get install -y nghttp2-client)
	$(PY) bench/worker.py

# The registry (or N replicas on PostgreSQL) under a fleet's heartbeats and watchers
# (BENCH_SCALE_FLAGS=--workers 5000 --watchers 50 ..., or --postgres --replicas 1,2 --capacity).
bench-registry-scale: $(STAMP)
	$(PY) bench/registry_scale.py $(BENCH_SCALE_FLAGS)

# Data-plane authentication's cost: worker unary@32 with auth on / off in one run.
bench-auth: $(STAMP)
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || sudo apt-get install -y nghttp2-client)
	$(PY) bench/auth.py

bench-gateway: $(STAMP)
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || sudo apt-get install -y nghttp2-client)
	$(PY) bench/gateway.py

# This checkout's gateway and worker against BEFORE's (a git revision, default HEAD~1),
# side by side in one run: the throughput cells of bench-gateway and their ratios.
bench-gateway-before-after: $(STAMP)
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || sudo apt-get install -y nghttp2-client)
	BEFORE=$(or $(BEFORE),HEAD~1) $(PY) bench/gateway_before_after.py

bench-trainer: $(STAMP)
	$(PY) bench/trainer.py

# Appends per second on each backend (the SQL one through a registry it starts; JetStream
# on the NATS server at 127.0.0.1:4222, or LIVEML_BENCH_NATS), and the gateway's unary@32
# with prediction logging at 100% / off (h2load, installed here if missing).
bench-events: $(STAMP)
	command -v h2load >/dev/null || (apt-get install -y nghttp2-client || sudo apt-get install -y nghttp2-client)
	$(PY) bench/events.py

# Online learner: examples/s on one core, freshness, 0 failures while publishing every
# second (BENCH_ONLINE_FLAGS="--duration 30" for a trial; the recorded run is 300 s).
bench-online: $(STAMP)
	$(PY) bench/online.py $(BENCH_ONLINE_FLAGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
