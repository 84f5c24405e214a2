# make demo   - the blog example end to end (embedded PostgreSQL and Redis when none runs)
# make lint   - ruff, and mypy on pgcelery/ and a typed user module (tests/typed_usage.py)
# make test   - lint and the whole test suite against real PostgreSQL, Redis and Celery workers
#             on psycopg2, then the broker-facing, end-to-end and fault tests on psycopg 3, and
#             the broker-facing tests on RabbitMQ when one runs on 127.0.0.1:5672
# make test-fast - the unit and integration tiers (PostgreSQL and Redis only), in seconds
# make bench / make bench-quick - the benchmark (full, or smaller sizes)
# make test-oldest - the suite on Python 3.10 with the oldest supported Django, Celery, pgtrigger
# make soak      - writers at a steady rate for 10 minutes (SOAK_ARGS="--minutes 30 --rate 200")
# make docs      - the documentation site, built strict (a broken link or reference fails), in site/
PYTHON ?= python3
PYTHON_OLDEST ?= python3.10
VENV ?= .venv
CONSTRAINTS ?=
EXTRAS ?= test,embedded,psycopg,lint,docs
RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672//
BIN := $(VENV)/bin
SERVICES := $(BIN)/python scripts/with_services.py

#: The tests that talk to the broker or run the real commands: each driver and broker runs them.
BROKER_TESTS := tests/test_bridge.py tests/test_databases.py tests/test_e2e.py

.PHONY: install demo test test-suite test-fast test-psycopg test-rabbitmq test-oldest lint docs bench bench-quick soak clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[$(EXTRAS)]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(SERVICES) $(BIN)/python example_project/demo.py

lint: install
	$(BIN)/ruff check .
	PYTHONPATH=.:example_project $(BIN)/mypy

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint test-suite

# Every run of the suite, without the lint (which needs the newest releases).
test-suite: install
	$(SERVICES) $(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-psycopg
	$(MAKE) --no-print-directory test-rabbitmq

test-fast: lint
	$(SERVICES) $(BIN)/python -m pytest -m "unit or integration" $(PYTEST_ARGS)

test-psycopg: install
	PGCELERY_TEST_DRIVER=psycopg $(SERVICES) \
		$(BIN)/python -m pytest $(BROKER_TESTS) tests/test_faults.py tests/test_notify.py \
			tests/test_redelivery.py tests/test_pgbouncer.py tests/test_hung_peers.py \
			tests/test_tracing.py tests/test_metrics.py tests/test_schema.py tests/test_testing.py

test-rabbitmq: install
	@if $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5672), 1)" \
			2>/dev/null; then \
		CELERY_BROKER_URL='$(RABBITMQ_URL)' $(SERVICES) \
			$(BIN)/python -m pytest $(BROKER_TESTS); \
	else \
		echo "No RabbitMQ on 127.0.0.1:5672: the RabbitMQ run is skipped."; \
	fi

bench: install
	$(SERVICES) $(BIN)/python bench/run.py

bench-quick: install
	$(SERVICES) $(BIN)/python bench/run.py --quick

soak: install
	$(SERVICES) $(BIN)/python bench/soak.py $(SOAK_ARGS)

test-oldest:
	$(MAKE) test-suite PYTHON=$(PYTHON_OLDEST) VENV=.venv-oldest \
		CONSTRAINTS=tests/oldest-constraints.txt EXTRAS=test,embedded,psycopg

clean:
	rm -rf .venv .venv-oldest build dist *.egg-info example_project/.demo-logs
