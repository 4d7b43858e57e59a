# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast bench lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Start web + worker on embedded defaults (SQLite, a private redis-server); Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/python -m app.devtools.devserver

## The whole suite (SQLite and, when reachable, PostgreSQL; real Redis servers it starts itself),
## after the layer rules (.importlinter); ends with the branch coverage of app/ and workers/.
test: $(STAMP)
	$(BIN)/ruff check app workers config tests migrations
	$(BIN)/lint-imports
	$(BIN)/python -m pytest --cov=app --cov=workers --cov-branch --cov-report=term:skip-covered $(PYTEST_ARGS)

## The benchmark suite (bench/README.md): every scenario and baseline in one run, one table,
## saved to bench/results/latest.md. Needs PostgreSQL on 127.0.0.1:5432 and wrk (installed
## from Debian's packages when missing). BENCH_ARGS=--quick for a short run.
bench: $(STAMP)
	command -v wrk >/dev/null && command -v redis-benchmark >/dev/null || (apt-get update && apt-get install -y wrk redis-tools)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

## Unit and API tests only (no end-to-end processes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app workers config tests migrations bench
	$(BIN)/ruff format --check app workers config tests bench

clean:
	rm -rf $(VENV) instance .pytest_cache
