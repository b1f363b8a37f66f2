# astrid — the two commands of the README are `make up` and `make test`; both work on a fresh
# machine (Python 3.11, gcc, make): they create .venv, install the project and build capsules.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make up` runs on an embedded default: everything under a local ASTRID_HOME.
ASTRID_HOME ?= $(CURDIR)/.astrid-home
WORKSPACE ?= $(ASTRID_HOME)/workspace
CAPSULE_SOURCES := $(wildcard capsules/include/*.h capsules/examples/*/*.c capsules/examples/*/*.toml)
TEST_CAPSULE_SOURCES := $(wildcard capsules/include/*.h tests/capsules/*/*.c tests/capsules/*/*.wat tests/capsules/*/*.toml)

.PHONY: up test chaos lint typecheck unit capsules test-capsules install clean help

help:
	@echo "make up     - install, build the example capsules, run the supervisor (ASTRID_HOME=$(ASTRID_HOME))"
	@echo "make test   - install, build the test capsules, lint, type-check, run the whole suite"
	@echo "make chaos  - the long chaos test: 12 capsules, 5 minutes of SIGKILLs (CHAOS_ARGS=...)"
	@echo "make capsules / make test-capsules - rebuild capsules from source"
	@echo "make clean  - remove the virtualenv, build outputs and the local ASTRID_HOME"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

capsules: $(STAMP)
	$(BIN)/python capsules/build.py capsules/examples

test-capsules: $(STAMP)
	$(BIN)/python capsules/build.py capsules/examples tests/capsules

up: capsules
	@mkdir -p $(WORKSPACE)
	$(BIN)/python capsules/build.py --install $(ASTRID_HOME)/capsules capsules/examples
	@echo "ASTRID_HOME=$(ASTRID_HOME): in another shell run"
	@echo "  ASTRID_HOME=$(ASTRID_HOME) $(BIN)/astrid ps"
	ASTRID_HOME=$(ASTRID_HOME) $(BIN)/astrid-supervisor up --workspace $(WORKSPACE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: test-capsules lint typecheck
	$(BIN)/pytest

# The long load and chaos run (tests/chaos/chaos.py); `make test` runs a 20-second version.
# Extra options through CHAOS_ARGS, e.g. CHAOS_ARGS="--seed 7 --duration 600 --keep".
chaos: test-capsules
	$(BIN)/python -m tests.chaos.chaos --capsules 12 --duration 300 $(CHAOS_ARGS)

# `make bench`: every benchmark of bench/ (2-5 minutes here); tables on stdout, progress on
# stderr, results in bench/results/latest.json. BENCH_ARGS=--quick for a smoke run.
.PHONY: bench
bench: capsules
	$(BIN)/python capsules/build.py bench/capsules
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .astrid-home .pytest_cache .mypy_cache .ruff_cache
	find capsules tests/capsules -name '*.wasm' -delete
