# neon-local: `make install` sets up a fresh machine, `make test` runs every test, `make soak` the fault injection, `make bench` writes bench/results.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test soak bench lint clean

install: $(BIN)/neon-local tests/node/node_modules

$(BIN)/neon-local: pyproject.toml setup.py $(wildcard neon_local/postgres/contrib/src/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

tests/node/node_modules: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test: install lint
	$(BIN)/pytest -n 2 -q

# Fault injection under load (kill -9, disk full on a tmpfs, 1,000 clients): a few minutes, needs root for mount.
soak: install
	$(BIN)/pytest -q -s tests/soak_faults.py

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/python -m pyflakes neon_local bench

clean:
	rm -rf $(VENV) tests/node/node_modules .neon-local
