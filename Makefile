# vpp developer commands. Every target that needs the venv runs `setup` first, which is
# quick when nothing changed (packaging/setup-dev.sh keeps a stamp).
#
#   make demo   [DEMO_ARGS=...]     set up, then run the demo
#   make test   [PYTEST_ARGS=...] [TEST_WORKERS=2]   set up, then run the whole test suite
#   make bench                      set up, then run every bench/*.py
#   make deb                        set up, then build the gateway's .deb into build/
#   make lint | format | clean | distclean

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (the end-to-end tests run one at a time on one of them)
TEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: help setup test demo bench deb lint format clean distclean

help:
	@echo "make demo    - set up (Debian packages + .venv) and run the demo (DEMO_ARGS=...)"
	@echo "make test    - set up and run the whole test suite (PYTEST_ARGS=...)"
	@echo "make bench   - set up and run the benchmarks in bench/"
	@echo "make deb     - set up and build the gateway's package (build/vpp-edge_*.deb)"
	@echo "make lint    - ruff check + ruff format --check"
	@echo "make format  - ruff format + ruff check --fix"
	@echo "make setup   - only the setup (packaging/setup-dev.sh)"
	@echo "make clean   - remove caches and build output (distclean: also .venv)"

setup:
	@bash packaging/setup-dev.sh

# Two passes: everything but the `alone` tests on the xdist workers, then those one at a time
# with the machine to themselves (a whole system on an accelerated wall clock). Both always
# run; the exit code is the first failure's. "No test collected" (5) in one pass is fine when
# PYTEST_ARGS selects tests of the other pass only.
test: setup
	@status=0; ran=0; \
	s=0; $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not alone" --durations=30 $(PYTEST_ARGS) || s=$$?; \
	[ $$s -eq 5 ] || { ran=1; [ $$s -eq 0 ] || status=$$s; }; \
	s=0; $(VENV)/bin/pytest -m alone --durations=5 $(PYTEST_ARGS) || s=$$?; \
	[ $$s -eq 5 ] || { ran=1; [ $$s -eq 0 ] || [ $$status -ne 0 ] || status=$$s; }; \
	[ $$ran -eq 1 ] || status=5; \
	exit $$status

demo: setup
	$(VENV)/bin/vpp demo $(DEMO_ARGS)

# Runs each bench/*.py (files starting with "_" are helpers) with the venv python; runs
# them all, then fails if any failed.
bench: setup
	@shopt -s nullglob; files=(bench/[!_]*.py); \
	if [ $${#files[@]} -eq 0 ]; then echo "bench: no benchmarks in bench/ yet"; exit 0; fi; \
	failed=(); \
	for f in "$${files[@]}"; do \
		echo "== bench: $$f"; \
		$(PY) "$$f" || failed+=("$$f"); \
	done; \
	if [ $${#failed[@]} -gt 0 ]; then echo "bench: FAILED: $${failed[*]}"; exit 1; fi; \
	echo "bench: $${#files[@]} benchmark(s) ok"

# The gateway's Debian package (packaging/deb/build.sh; packaging/README.md).
deb: setup
	PYTHON=$(PY) bash packaging/deb/build.sh build

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis build dist htmlcov .coverage
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./.venv -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
