# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench services-up services-down clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
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

clean:
	rm -rf $(VENV) .modeltrail .pytest_cache .mypy_cache .ruff_cache .hypothesis
