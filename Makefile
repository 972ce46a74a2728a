# Everyday commands; each is a thin wrapper over the real tool. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
ENV ?= vagrant

.DEFAULT_GOAL := help
.PHONY: help dev stop test lock lint health check db-upgrade deploy deploy-check dns test-deploy clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@scripts/ensure-venv $(PYTHON) $(VENV)
	@# The service's dependencies at the lock file's versions (what a deploy installs); the lock's
	@# hashes are for deploys: pip refuses hashes beside an editable install.
	@sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' requirements.lock > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e '.[test,dev,deploy]'
	@touch $@

dev: $(STAMP) ## Start the local stack, migrations, API (reloading), worker and scheduler; Ctrl-C stops
	$(BIN)/python -m devstack.dev

stop: ## Stop everything `make dev` started
	-$(BIN)/python -m devstack.dev --stop

test: $(STAMP) ## Run the test suite against real PostgreSQL, Redis, Dovecot and Postfix
	$(BIN)/python -m devstack install --test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lock: ## Re-resolve the locks (exact versions, hashes); fail if a pin lacks a 3.13 or 3.11 wheel
	@scripts/ensure-venv $(PYTHON) $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --output-file requirements.lock pyproject.toml
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
		--no-emit-find-links --output-file requirements-build.lock requirements-build.in
	@# Fails when a pin has no wheel (or no hash in the lock) for Debian 13's or Debian 12's Python.
	$(BIN)/python scripts/check_wheels.py

lint: $(STAMP) ## Static checks: ruff, the architecture's import contracts, mypy --strict
	$(BIN)/ruff check app workers devstack tests tasks inventories bench scripts deploy.py
	PYTHONPATH=. $(BIN)/lint-imports
	$(BIN)/mypy

health: ## GET /health of the running dev API
	@curl -sS -w '\n' http://127.0.0.1:$${API_PORT:-5000}/health

check: $(STAMP) ## Start-up checks against the dev stack's settings
	@set -a; [ -f .stack/dev/env ] && . .stack/dev/env; set +a; $(BIN)/emailservice check

db-upgrade: $(STAMP) ## Apply migrations to the dev stack's database
	@set -a; [ -f .stack/dev/env ] && . .stack/dev/env; set +a; $(BIN)/emailservice db upgrade

deploy: $(STAMP) ## Deploy to ENV (vagrant, staging or production): make deploy ENV=staging
	@test -f inventories/$(ENV).py || { echo "no inventory inventories/$(ENV).py" >&2; exit 2; }
	$(BIN)/pyinfra -y inventories/$(ENV).py deploy.py

deploy-check: $(STAMP) ## Dry run against ENV: what a deploy would change, with diffs (secrets hidden)
	@test -f inventories/$(ENV).py || { echo "no inventory inventories/$(ENV).py" >&2; exit 2; }
	$(BIN)/pyinfra inventories/$(ENV).py deploy.py --dry --diff

# `make dns` reads ENV's inventory (INVENTORY=path for another); only mail hosts print records.
dns: $(STAMP) ## Print the DNS records to publish for ENV's mail domains (MX, SPF, DKIM, DMARC, ...)
	@inventory=$(or $(INVENTORY),inventories/$(ENV).py); log=$$(mktemp); \
	test -f $$inventory || { echo "no inventory $$inventory" >&2; exit 2; }; \
	if $(BIN)/pyinfra -y --group-data inventories/group_data $$inventory exec -- \
		'test ! -x /usr/local/sbin/emailservice-dns || /usr/local/sbin/emailservice-dns' \
		> "$$log" 2>&1; \
	then sed -n 's/^\[[^]]*\] //p' "$$log"; rm -f "$$log"; \
	else cat "$$log" >&2; rm -f "$$log"; exit 1; fi

test-deploy: $(STAMP) ## Deploy onto booted Debian 13 and 12 test hosts (twice each), check from outside
	$(BIN)/python -m devstack install --test-tools
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)

.PHONY: docs
docs: $(STAMP) ## Regenerate docs/api.md, .env.example and the README's settings table from the code
	$(BIN)/python scripts/api_reference.py
	$(BIN)/python scripts/settings_reference.py

clean: stop ## Remove the virtualenv and the dev stack's data
	rm -rf $(VENV) .stack build dist *.egg-info

# Operator targets on the dev stack's logs and database (deployed hosts: docs/deploy.md).
.PHONY: logs db-reset db-backup db-restore

logs: ## Follow the dev stack's server logs (PostgreSQL, Redis, Dovecot, Postfix)
	@test -d .stack/dev/log || { echo "no dev stack here: start it with make dev" >&2; exit 1; }
	tail -n 20 -F .stack/dev/log/*

db-reset: $(STAMP) ## Empty the dev stack's database and migrate it again (asks first)
	$(BIN)/python scripts/dev-db reset

db-backup: $(STAMP) ## pg_dump -Fc the dev stack's database into backups/
	$(BIN)/python scripts/dev-db backup

db-restore: $(STAMP) ## Put a dump back as the dev stack's database: make db-restore FILE=...
	@test -n "$(FILE)" || { echo "usage: make db-restore FILE=backups/<name>.dump" >&2; exit 2; }
	$(BIN)/python scripts/dev-db restore "$(FILE)"

# The benchmark suite (bench/; results in BENCHMARKS.md): the comparators and the bench extra first.
.PHONY: bench bench-quick
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e '.[test,dev,deploy,bench]'
	@touch $@

bench: $(BENCH_STAMP) ## Run benchmarks B1-B6 at full size (long): bench/results/full.md, BENCHMARKS.md
	$(BIN)/python -m devstack install --bench-tools
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP) ## Run benchmarks B1-B6 at quick size (a few minutes): bench/results/quick.md
	$(BIN)/python -m devstack install --bench-tools
	$(BIN)/python -m bench --quick $(BENCH_ARGS)
