# neon-local: `make install` sets up a fresh machine, `make test` runs every test, `make soak` the fault injection, `make bench` writes bench/results.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test soak bench lint clean image image-test

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

# The container image (images/Containerfile) from a freshly built wheel, on a bookworm base made here with
# mmdebstrap (images/base.sh); image-test starts it with buildah and smoke-tests it from the host.
IMAGE ?= localhost/neon-local:dev
IMAGE_BASE ?= localhost/neon-local-base:bookworm

image: install
	rm -rf dist
	$(BIN)/python -m build --wheel --outdir dist . >/dev/null
	$(BIN)/pip download --quiet --only-binary :all: --dest dist dist/neon_local-*.whl
	buildah inspect --type image $(IMAGE_BASE) >/dev/null 2>&1 || images/base.sh $(IMAGE_BASE)
	buildah bud --quiet --isolation chroot --layers=false --format docker --build-arg BASE=$(IMAGE_BASE) --build-arg PIP_NO_INDEX=1 -f images/Containerfile -t $(IMAGE) . >/dev/null
	buildah rmi --prune >/dev/null  # the image this build replaced
	@buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' $(IMAGE)

image-test: image
	IMAGE=$(IMAGE) $(BIN)/pytest -q -s images/test_image.py

# ruff's rules and mypy's strictness are chosen in pyproject.toml; mypy keeps its cache in .mypy_cache.
lint: install
	$(BIN)/ruff check neon_local bench tests
	$(BIN)/mypy neon_local

clean:
	rm -rf $(VENV) tests/node/node_modules .neon-local
