PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PROFILE_STAMP := $(VENV)/.profile-installed

.PHONY: install lint test bench bench-capture bench-tune profile demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

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

# How the worker's defaults were chosen: batch size, bulk concurrency, poll interval swept.
bench-tune: $(STAMP)
	$(BIN)/python -m bench.tune

$(PROFILE_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[profile]'
	touch $(PROFILE_STAMP)

# Where one worker's CPU goes while it drains the sync backlog, sampled by py-spy.
profile: $(PROFILE_STAMP)
	$(BIN)/python -m bench.profile

demo: $(STAMP)
	$(BIN)/python -m demo

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
