# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   run the service on the embedded SQLite default
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo serve test lint typecheck pytest clean

$(BIN)/healthdock-mirror: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/healthdock-mirror

# The receiver, the scheduler and a local fake HealthDock, on the embedded SQLite default.
demo: install
	$(BIN)/healthdock-mirror demo

serve: install
	$(BIN)/healthdock-mirror serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
