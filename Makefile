# Two commands on a fresh machine: `make run` serves Parley, `make test` runs the suite
# (`make test-unit` and the other tiers run a part of it; see tests/README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.parley-installed
# CPU torch where no NVIDIA GPU is present (a plain `torch` would pull a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0
# The versions of everything else that the suite last passed with (`make lock` renews them), so a
# release upstream cannot change a fresh clone's install under it.
CONSTRAINTS := constraints.txt

.PHONY: install browser run test test-unit test-api test-integration test-ops lint bench bench-gpu \
	load soak lock clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch; \
	else \
		$(PY) -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

run: install
	$(VENV)/bin/parley up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Debian's chromium, for the playground's browser test (Playwright drives it; it never downloads
# a browser of its own). apt-get as root, else through sudo.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| { $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; }; }

# Everything: lint, then every tier (pytest's testpaths). What `.ci/run` calls.
test: lint browser
	$(PY) -m pytest $(PYTEST_ARGS)

# One tier at a time (tests/README.md), without lint; extra pytest options through PYTEST_ARGS,
# e.g. make test-unit PYTEST_ARGS="-k window". unit needs no services; api needs Redis and
# PostgreSQL; integration also starts worker processes; ops drives compose, `parley up`,
# supervision, the browser, load, faults and Sentinel.
test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-api: install
	$(PY) -m pytest tests/api $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-ops: install browser
	$(PY) -m pytest tests/ops $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run

# On a machine with a GPU: full-size csm-1b shapes, random weights, bf16 (bench/gpu.py). Needs only
# torch, transformers and numpy, so it runs on the machine's own python without installing Parley.
GPU_PYTHON ?= python3
bench-gpu:
	PYTHONPATH=. PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m bench.gpu $(GPU_ARGS)

# Options through LOAD_ARGS, e.g. make load LOAD_ARGS="--db postgresql --conversations 32"
load: install
	$(PY) -m bench.load $(LOAD_ARGS)

# Load while a chaos loop kills or freezes a worker, Redis or the API every few seconds; then
# every turn is read back (bench/soak.py). Two minutes unless told, e.g.
# make soak SOAK_ARGS="--minutes 10" (or "--db postgresql", "--round-robin", "--seed 3")
soak: install
	$(PY) -m bench.soak $(SOAK_ARGS)

# Take the newest releases pyproject.toml allows: install them into a scratch venv and pin what
# it got (torch aside: the machine decides that one). Run `make test` after it.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "$(TORCH_CPU)"
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v -i '^torch==' > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) .parley parley.db parley.db-wal parley.db-shm
