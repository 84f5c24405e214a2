# make demo   - the blog example end to end (embedded PostgreSQL and Redis when none runs)
# make lint   - ruff, and mypy on pgcelery/ and a typed user module (tests/typed_usage.py)
# make test   - lint and the whole test suite against real PostgreSQL, Redis and Celery workers
#             on psycopg2, and side by side with it the tests marked `connector` on psycopg 3
#             and those marked `broker` on RabbitMQ when one runs on 127.0.0.1:5672
#             (OLDEST=python3.10: and the suite on the oldest releases, beside it too)
# make test-fast - the unit and integration tiers (PostgreSQL and Redis only, no subprocess),
#             in seconds; lint apart (make lint)
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

#: Runs side by side each take a slot of their own (a database, Redis databases): see
#: scripts/with_services.py. A suite's passes take SLOT and the next two.
SLOT ?= 0
#: The tiers each pass runs (a marker expression; all when empty).
TIERS ?=
#: The oldest releases run every tier but the fault tests, whose outcome is this code's; in
#: slots of their own when they run beside the newest (.ci/run).
OLDEST_TIERS ?= not faults
OLDEST_SLOT ?= $(SLOT)
#: The passes of a suite. RabbitMQ has one vhost here, which two passes cannot share, so the
#: oldest releases leave the broker tests on RabbitMQ to the newest.
SUITE_PASSES ?= test-main test-psycopg test-rabbitmq
OLDEST_PASSES ?= test-main test-psycopg

.PHONY: install demo test test-suite test-main test-fast test-psycopg test-rabbitmq test-oldest lint docs bench bench-quick soak clean

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

# With OLDEST (a Python 3.10), the suite on the oldest releases runs beside it (slots 3 to 5).
test: lint
	$(MAKE) --no-print-directory --output-sync=target -j2 test-suite \
		$(if $(OLDEST),test-oldest PYTHON_OLDEST=$(OLDEST) OLDEST_SLOT=3)

# Every pass of the suite, side by side, each printed whole once it ends; without the lint
# (which needs the newest releases).
test-suite: install
	$(MAKE) --no-print-directory --output-sync=target -j3 $(SUITE_PASSES)

test-main: install
	PGCELERY_TEST_SLOT=$(SLOT) $(SERVICES) \
		$(BIN)/python -m pytest $(if $(TIERS),-m "$(TIERS)") $(PYTEST_ARGS)

test-fast: install
	$(SERVICES) $(BIN)/python -m pytest -m "unit or integration" $(PYTEST_ARGS)

test-psycopg: install
	PGCELERY_TEST_DRIVER=psycopg PGCELERY_TEST_SLOT=$$(($(SLOT) + 1)) $(SERVICES) \
		$(BIN)/python -m pytest -m "connector$(if $(TIERS), and ($(TIERS)))"

test-rabbitmq: install
	@if $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5672), 1)" \
			2>/dev/null; then \
		CELERY_BROKER_URL='$(RABBITMQ_URL)' PGCELERY_TEST_SLOT=$$(($(SLOT) + 2)) $(SERVICES) \
			$(BIN)/python -m pytest -m "broker$(if $(TIERS), and ($(TIERS)))"; \
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
	$(MAKE) test-suite PYTHON=$(PYTHON_OLDEST) VENV=.venv-oldest TIERS="$(OLDEST_TIERS)" \
		SLOT=$(OLDEST_SLOT) SUITE_PASSES="$(OLDEST_PASSES)" \
		CONSTRAINTS=tests/oldest-constraints.txt EXTRAS=test,embedded,psycopg

clean:
	rm -rf .venv .venv-oldest build dist *.egg-info example_project/.demo-logs
