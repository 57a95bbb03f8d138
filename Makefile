# The two set-up commands of the README. Both create .venv from scratch when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test check demo install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# lint, format and types first (seconds), then the suite
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# the in-process suites on two workers (each its own process: they share nothing), then the integration tests one at
# a time (each starts real gateways, twins and agents: run two at once on two cores, a few timed out waiting).
# PYTEST_ARGS="...": one pytest run of those arguments instead (a file, -k NAME)
test: check
ifeq ($(strip $(PYTEST_ARGS)),)
	$(BIN)/python -m pytest -q -n 2 tests/unit tests/property tests/strategies tests/contract
	$(BIN)/python -m pytest -q tests/integration
else
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
endif

demo: $(STAMP)
	$(BIN)/ktrader demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
