# Two commands on a fresh machine with Python 3.11 and make:
#   make demo   run the service on the embedded SQLite default
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install browser demo serve test lint typecheck pytest clean

$(BIN)/healthdock-mirror: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# Bytecode for the checkout's modules (its packages, tests and bench), as a wheel's install
	# leaves for its own: an editable install has none, and where PYTHONDONTWRITEBYTECODE is set
	# every command compiled them again.
	$(BIN)/python -m compileall -q -x '/\.(venv|git)/' .
	touch $@

install: $(BIN)/healthdock-mirror

# Debian's Chromium, which the browser tests (tests/browser/) drive through Playwright: it never
# downloads a browser of its own. The package list is refreshed once, only if the install fails.
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
		DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES) || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES); }; \
	fi

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

pytest: install browser
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
