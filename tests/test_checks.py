"""pgcelery's system checks, each raised in a settings variant that calls for it, and the
bridge's start-up error for listener triggers missing from the database."""

import json
import subprocess
import sys

import pytest
from celery import Celery
from django.core.checks import run_checks
from django.db import connection
from django.test import override_settings
from pgtrigger import registered

from pgcelery.checks import (
    check_atomic_above_listeners,
    check_celery_app,
    check_databases_drained,
    check_function_privileges_narrowed,
    check_settings,
    check_workers_keep_connections,
)
from tests import support
from tests.testapp.models import Writer

#: A Celery app configured as Celery's defaults leave it: workers close the database
#: connections after every task.
app_without_reuse = Celery("without_reuse", set_as_current=False)

APPS_WITHOUT_PGTRIGGER = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "pgcelery", "blog", "tests.testapp",
]


def manage_check(settings_module="tests.settings", **settings):
    """``manage.py check`` in the example project: (exit status, output)."""
    env = support.subprocess_env(DJANGO_SETTINGS_MODULE=settings_module,
                                 PGCELERY_TEST_SETTINGS=json.dumps(settings))
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=support.EXAMPLE,
                            env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


def ids(messages):
    return [message.id for message in messages]


@pytest.mark.e2e
def test_the_example_project_checks_clean():
    status, output = manage_check("proj.settings")
    assert (status, output.strip()) == (0, "System check identified no issues (0 silenced).")


@pytest.mark.e2e
def test_pgtrigger_missing_from_installed_apps_is_an_error_not_a_crash():
    status, output = manage_check(INSTALLED_APPS=APPS_WITHOUT_PGTRIGGER)
    assert status == 1
    assert "Traceback" not in output
    assert "(pgcelery.E002) django-pgtrigger is not in INSTALLED_APPS" in output
    assert "HINT: Add 'pgtrigger' to INSTALLED_APPS" in output


@pytest.mark.e2e
def test_no_celery_app_is_a_warning():
    """A project whose package does not import its Celery app, as a Django project without
    Celery's setup is."""
    script = (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(INSTALLED_APPS=['pgtrigger', 'pgcelery'], DATABASES={'default': {\n"
        "    'ENGINE': 'django.db.backends.postgresql', 'NAME': 'not_connected_to'}})\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('check')\n"
    )
    env = support.subprocess_env()
    del env["DJANGO_SETTINGS_MODULE"]
    result = subprocess.run([sys.executable, "-c", script], cwd=support.ROOT / "tests",
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(pgcelery.W002) No Celery app is loaded" in result.stderr
    assert "pgcelery.W004" not in result.stderr


def test_workers_closing_their_connection_after_every_task_is_a_deployment_warning():
    """A production concern: ``check --deploy`` reports it, not every ``manage.py`` command
    of a new project."""
    assert check_workers_keep_connections() == []
    with override_settings(PGCELERY_CELERY_APP="tests.test_checks.app_without_reuse"):
        assert check_celery_app() == []
        [warning] = check_workers_keep_connections()
        assert warning.id == "pgcelery.W004"
        assert warning.msg.startswith("CELERY_DB_REUSE_MAX is not set")
        assert "pgcelery.W004" not in [found.id for found in run_checks()]
        assert "pgcelery.W004" in [found.id for found in run_checks(include_deployment_checks=True)]


def test_functions_every_role_may_execute_are_a_deployment_warning():
    [warning] = check_function_privileges_narrowed()
    assert warning.id == "pgcelery.W007"
    assert "pgcelery.W007" not in [found.id for found in run_checks()]
    assert "pgcelery.W007" in [found.id for found in run_checks(include_deployment_checks=True)]
    with override_settings(PGCELERY_WORKER_ROLES=[]):
        assert check_function_privileges_narrowed() == []


@pytest.mark.parametrize(("name", "value"), [
    ("PGCELERY_BATCH_SIZE", 0), ("PGCELERY_METRICS_PORT", 99999), ("PGCELERY_DATABASES", ["x"]),
    ("PGCELERY_WORKER_ROLES", "worker"), ("PGCELERY_APP_ROLES", ["web", ""]),
])
def test_an_unusable_setting_is_an_error(name, value):
    assert check_settings() == []
    with override_settings(**{name: value}):
        [error] = check_settings()
    assert error.id == "pgcelery.E003"
    assert error.msg.startswith(f"{name} must be ")


def test_a_database_with_the_outbox_that_no_bridge_drains_is_a_warning():
    [warning] = check_databases_drained()
    assert (warning.id, warning.obj) == ("pgcelery.W003", "other")
    assert "PGCELERY_DATABASES (['default']) does not list it" in warning.msg
    with override_settings(PGCELERY_DATABASES=["default", "other"]):
        assert check_databases_drained() == []


@pytest.mark.usefixtures("transactional_db")
def test_the_bridge_names_listener_triggers_missing_from_the_database(spawn):
    """As after a `migrate` that did not run, or a trigger dropped by hand."""
    trigger_name = support.trigger_of("writer_renamed")
    [(model, trigger)] = registered(f"testapp.Writer:{trigger_name}")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER {trigger.get_pgid(model)} ON {Writer._meta.db_table}")
    try:
        bridge = spawn.bridge()
    finally:
        trigger.install(model)
    assert bridge.stop() == 0
    [line] = [line for line in bridge.log().splitlines() if "is not installed" in line]
    assert line.endswith(
        f"ERROR/pgcelery_bridge] Database 'default': the trigger {trigger_name!r} of a "
        "listener on testapp.Writer is not installed, so the writes it watches are not "
        "recorded. Run `python manage.py makemigrations testapp`, then `migrate`.")


def test_transaction_atomic_above_a_listener_decorator_is_a_warning():
    assert check_atomic_above_listeners() == []
    import tests.atomic_above  # noqa: F401 - registers its listeners

    [warning] = check_atomic_above_listeners()
    assert (warning.id, warning.obj) == ("pgcelery.W005", "tests.atomic_above.wrapped_listener")
    assert "pass atomic=True to the listener decorator" in warning.hint
