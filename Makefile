# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench services-up services-down clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "modeltrail needs Python 3.11 or newer; $(PYTHON) is: $$($(PYTHON) -V 2>&1)." >&2; \
	  echo "Install one and run: make PYTHON=python3.11 (or python3.12, ...)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "$(PYTHON) -m venv failed: on Debian/Ubuntu install python3-venv" \
	    "(apt-get install python3-venv, or python3.X-venv for python3.X)" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,torch]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modeltrail --home .modeltrail/demo demo --fresh

lint: $(STAMP)
	$(VENV)/bin/ruff check modeltrail tests bench scripts
	$(VENV)/bin/ruff format --check modeltrail tests bench scripts
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py

# Long-lived PostgreSQL and Kafka for repeated test runs (the tests start private ones
# otherwise): eval "$(make -s services-up)" exports MODELTRAIL_TEST_PG/_KAFKA for them.
services-up:
	@$(PYTHON) scripts/services.py start postgres
	@$(PYTHON) scripts/services.py start kafka

services-down:
	@$(PYTHON) scripts/services.py stop all

clean:
	rm -rf $(VENV) .modeltrail .pytest_cache .mypy_cache .ruff_cache .hypothesis
