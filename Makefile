# Everyday commands; each is a thin wrapper over the real tool. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help dev stop test lint health check db-upgrade clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@scripts/ensure-venv $(PYTHON) $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	@touch $@

dev: $(STAMP) ## Start the local stack, migrations, API (reloading), worker and scheduler; Ctrl-C stops
	$(BIN)/python -m devstack.dev

stop: ## Stop everything `make dev` started
	-$(BIN)/python -m devstack.dev --stop

test: $(STAMP) ## Run the test suite against real PostgreSQL, Redis, Dovecot and Postfix
	$(BIN)/python -m devstack install --test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## Static checks (ruff)
	$(BIN)/ruff check app workers devstack tests

health: ## GET /health of the running dev API
	@curl -sS -w '\n' http://127.0.0.1:$${API_PORT:-5000}/health

check: $(STAMP) ## Start-up checks against the dev stack's settings
	@set -a; [ -f .stack/dev/env ] && . .stack/dev/env; set +a; $(BIN)/emailservice check

db-upgrade: $(STAMP) ## Apply migrations to the dev stack's database
	@set -a; [ -f .stack/dev/env ] && . .stack/dev/env; set +a; $(BIN)/emailservice db upgrade

clean: stop ## Remove the virtualenv and the dev stack's data
	rm -rf $(VENV) .stack build dist *.egg-info
