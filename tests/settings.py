"""The example project's settings plus the test app.

``PGCELERY_TEST_DRIVER`` picks the PostgreSQL driver when both are installed: Django
prefers psycopg 3, so ``psycopg2`` (the default) hides it, and ``psycopg`` hides psycopg2,
as in a project that only installed psycopg 3.
"""

import json
import os
import sys

from kombu.common import Broadcast

from proj.settings import *  # noqa: F403
from proj.settings import DATABASES, INSTALLED_APPS, database_from_url

_DRIVERS = {"psycopg2": "psycopg", "psycopg": "psycopg2"}
_driver = os.environ.get("PGCELERY_TEST_DRIVER", "psycopg2")
if _driver not in _DRIVERS:
    raise RuntimeError(f"PGCELERY_TEST_DRIVER must be one of {sorted(_DRIVERS)}, not {_driver!r}.")
sys.modules[_DRIVERS[_driver]] = None  # type: ignore[assignment]  # importing it now fails

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp", "tests.pgpubsub_port"]
# A second database, for one bridge draining several.
DATABASES["other"] = {
    **DATABASES["default"],
    **(database_from_url(os.environ["OTHER_DATABASE_URL"]) if "OTHER_DATABASE_URL" in os.environ
       else {"NAME": DATABASES["default"]["NAME"] + "_other"}),
}
# The tests that write to it run their bridge with --database.
SILENCED_SYSTEM_CHECKS = ["pgcelery.W003"]
# pgpubsub's broadcast as Celery has it: every worker consuming "tests.broadcast" gets a
# queue of its own bound to the fanout exchange. The other queues are made as needed.
CELERY_TASK_QUEUES = [Broadcast("tests.broadcast")]
# Long enough that tests pass only if LISTEN wake-ups work.
PGCELERY_SWEEP_INTERVAL = 300.0

# NAME=VALUE: one setting as a test needs it in a subprocess (a command's start-up checks);
# PGCELERY_TEST_SETTINGS: several, as a JSON object.
if "PGCELERY_TEST_SETTING" in os.environ:
    _name, _, _value = os.environ["PGCELERY_TEST_SETTING"].partition("=")
    globals()[_name] = json.loads(_value)
globals().update(json.loads(os.environ.get("PGCELERY_TEST_SETTINGS", "{}")))
