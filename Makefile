# Developer and CI entry points. Works from a fresh clone on Debian 12 (as root the first
# `make` installs the packages; as a normal user they must already be installed).
VENV    := .venv
PYTHON  := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-x -k pg"`.
PYTEST_ARGS ?=
# The whole suite must stay well inside CI's budget: fail rather than hang.
SESSION_TIMEOUT ?= 1800

.PHONY: all venv test test-fast lint demo docs docs-check bench clean

all: test

venv:
	bash scripts/bootstrap.sh

## The whole suite (unit, integration, e2e; slow tests included).
# pytest exits 5 when it collects nothing: say so, but that is not a failure of the code.
test: venv
	@rc=0; $(PYTEST) -q -rfEs --durations=15 --session-timeout=$(SESSION_TIMEOUT) \
	  $(PYTEST_ARGS) tests || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make test: no tests were collected"; rc=0; fi; exit $$rc

## Unit tests and the quick integration tests.
test-fast: venv
	$(PYTEST) -q -rfEs -m "not slow" $(PYTEST_ARGS) tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict tests

## The story in five minutes: throwaway CRM + ERP servers, sample data, the agent (Ctrl-C ends).
demo: venv
	$(VENV)/bin/cdc-agent demo

## docs/configuration.md is generated from the config models; docs-check fails when stale.
REFERENCE := docs/configuration.md
docs: venv
	$(PYTHON) -c 'import sys; from pathlib import Path; from agent.config.reference import write_reference; write_reference(Path(sys.argv[1]))' $(REFERENCE)

docs-check: venv
	@$(PYTHON) -c 'import sys; from pathlib import Path; from agent.config.reference import reference_markdown; sys.exit(Path(sys.argv[1]).read_text(encoding="utf-8") != reference_markdown())' $(REFERENCE) \
	  || { echo "$(REFERENCE) is out of date: run make docs" >&2; exit 1; }

bench: venv
	$(PYTHON) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
