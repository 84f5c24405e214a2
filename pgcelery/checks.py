"""System checks: pgcelery's misconfigurations reported by ``manage.py check`` and ``migrate``."""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Iterator
from typing import Any

import pgtrigger
from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, models, router, transaction
from django.db.migrations.loader import MigrationLoader
from pgtrigger import features

from pgcelery import (
    celery_internals,
    channels,
    conf,
    privileges,
    publish,
    registry,
    sql,
    trigger_migrations,
)
from pgcelery.models import Notification


@checks.register(checks.Tags.database)
def check_trigger_migrations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every migration with a trigger that executes a pgcelery function as its trigger
    function runs after the pgcelery migration that creates it.

    ``migrate`` runs apps' migrations in no set order between apps, and PostgreSQL refuses
    such a trigger before its function exists. (A trigger whose own function calls
    pgcelery's, as earlier releases wrote them, is created in any order.) ``makemigrations``
    writes the dependency; a migration written or edited by hand may lack it. Tagged
    ``database``, so ``migrate`` runs it.
    """
    loader = MigrationLoader(None, ignore_no_migrations=True)
    errors: list[checks.CheckMessage] = []
    for key, migration in sorted(loader.disk_migrations.items()):
        if key[0] == trigger_migrations.PGCELERY:
            continue
        before = set(loader.graph.forwards_plan(key))
        for trigger, needed in trigger_migrations.pgcelery_calls(migration.operations,
                                                                 executed_only=True):
            if (trigger_migrations.PGCELERY, needed) not in before:
                errors.append(checks.Error(
                    f"Migration {key[0]}.{key[1]} installs trigger {trigger!r}, which executes "
                    f"a function that migration pgcelery.{needed} creates, but does not "
                    "depend on it.",
                    hint=f"Add {(trigger_migrations.PGCELERY, needed)!r} to the dependencies "
                         f"of {key[0]}.{key[1]}.",
                    obj=f"{key[0]}.{key[1]}",
                    id="pgcelery.E001",
                ))
                break
    return errors


def _outbox_databases(databases: Any) -> Iterator[str]:
    """The PostgreSQL databases of those a database check is given that get the outbox."""
    for alias in databases or []:
        if (connections[alias].vendor == "postgresql"
                and router.allow_migrate_model(alias, Notification)):
            yield alias


@checks.register(checks.Tags.database)
def check_functions_schema(app_configs: Any = None, databases: Any = None,
                           **kwargs: Any) -> list[checks.CheckMessage]:
    """pgcelery's functions out of pg_catalog, where earlier releases' migrations created
    them when a superuser migrated: ``pg_dump`` leaves pg_catalog out, so a restored backup
    has triggers calling functions that do not exist. Tagged ``database``: ``migrate`` and
    ``check --database`` run it."""
    warnings: list[checks.CheckMessage] = []
    for alias in _outbox_databases(databases):
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(sql.FUNCTIONS_IN_PG_CATALOG)
                found = [row[0] for row in cursor.fetchall()]
        except DatabaseError:  # unreachable: migrate says so itself
            continue
        if found:
            warnings.append(checks.Warning(
                f"Database {alias!r} has pgcelery's functions in pg_catalog "
                f"({', '.join(found)}): pg_dump leaves them out, so a restored backup "
                "records no notification.",
                hint="Run `python manage.py migrate pgcelery`: migration 0008 moves them "
                     "into the outbox's schema.",
                obj=alias,
                id="pgcelery.W006",
            ))
    return warnings


@checks.register(checks.Tags.database)
def check_privilege_roles(app_configs: Any = None, databases: Any = None,
                          **kwargs: Any) -> list[checks.CheckMessage]:
    """The roles ``PGCELERY_APP_ROLES`` and ``PGCELERY_WORKER_ROLES`` name exist: ``migrate``
    grants them EXECUTE on pgcelery's functions, and leaves out a role it cannot find."""
    configured = privileges.configured_roles()
    if configured is None:
        return []
    warnings: list[checks.CheckMessage] = []
    for alias in _outbox_databases(databases):
        try:
            missing = privileges.missing_roles(alias, [*configured[0], *configured[1]])
        except DatabaseError:  # unreachable: migrate says so itself
            continue
        if missing:
            warnings.append(checks.Warning(
                f"Database {alias!r} has no role {', '.join(map(repr, missing))}, which "
                "PGCELERY_APP_ROLES or PGCELERY_WORKER_ROLES name: it cannot execute "
                "pgcelery's functions.",
                hint="Create the role (CREATE ROLE ... LOGIN) and run `python manage.py "
                     "migrate`, or correct the setting.",
                obj=alias,
                id="pgcelery.W008",
            ))
    return warnings


@checks.register(deploy=True)
def check_function_privileges_narrowed(app_configs: Any = None,
                                       **kwargs: Any) -> list[checks.CheckMessage]:
    """Roles named for pgcelery's functions: otherwise every role that can connect may
    execute them, and one that writes could forge the worker's records."""
    if privileges.configured_roles() is not None:
        return []
    return [checks.Warning(
        "PGCELERY_APP_ROLES and PGCELERY_WORKER_ROLES are not set: every database role may "
        "execute pgcelery's functions, so a role that can only write could pre-record an "
        "atomic=True listener's run (skipping it) or forge a failed delivery.",
        hint="Set PGCELERY_WORKER_ROLES to the roles your Celery workers connect as and "
             "PGCELERY_APP_ROLES to those your web processes connect as ([] for each that "
             "connects as the migrations owner), then run `python manage.py migrate`.",
        id="pgcelery.W007",
    )]


@checks.register()
def check_listener_triggers_migrated(app_configs: Any = None,
                                     **kwargs: Any) -> list[checks.CheckMessage]:
    """Every listener's trigger is in its app's migrations as it is declared.

    A trigger that ``makemigrations`` has not written is never installed: the bridge starts
    without a word, and every write the listener watches goes unrecorded.
    """
    if not features.migrations():  # pgtrigger installs triggers itself, without migrations
        return []
    loader = MigrationLoader(None, ignore_no_migrations=True)
    try:
        state = loader.project_state()
    except (LookupError, ValueError):  # migrations that do not apply: makemigrations says why
        return []
    warnings: list[checks.CheckMessage] = []
    for model, trigger in _listener_triggers():
        app_label, model_name = model._meta.app_label, model._meta.model_name
        if app_label in loader.unmigrated_apps or not model._meta.managed:
            continue  # no migration installs them: the bridge checks the database at start
        migrated = state.models.get((app_label, model_name))
        with trigger_migrations.compiled_against(state):
            # pgtrigger annotates the model class it takes as a model instance.
            compiled = trigger.compile(model)  # type: ignore[arg-type]
        if migrated is None or compiled not in migrated.options.get("triggers", []):
            warnings.append(checks.Warning(
                f"The trigger {trigger.name!r} of a listener on {model._meta.label} is not in "
                f"the migrations of {app_label!r} as it is declared: it is not installed, and "
                "the writes it watches are not recorded.",
                hint=f"Run `python manage.py makemigrations {app_label}`, then `migrate`.",
                obj=model,
                id="pgcelery.W001",
            ))
    return warnings


def uninstalled_listener_triggers(database: str) -> list[str]:
    """Why each listener trigger that ``database`` should have, and has not, matters: read at
    the bridge's start, since the system check sees the migrations but not the database.

    Raises:
        django.db.Error: if the database cannot be read.
    """
    with connections[database].cursor() as cursor:
        cursor.execute(sql.INSTALLED_TRIGGERS)
        installed = set(cursor.fetchall())
    return [
        f"Database {database!r}: the trigger {trigger.name!r} of a listener on "
        f"{model._meta.label} is not installed, so the writes it watches are not recorded. "
        + _how_to_install(model, trigger)
        for model, trigger in _listener_triggers()
        if router.allow_migrate_model(database, model)
        # pgtrigger annotates the model class it takes as a model instance.
        and (model._meta.db_table, trigger.get_pgid(model)) not in installed  # type: ignore[arg-type]
    ]


def _how_to_install(model: type[models.Model], trigger: pgtrigger.Trigger) -> str:
    if model._meta.managed:
        return (f"Run `python manage.py makemigrations {model._meta.app_label}`, then "
                "`migrate`.")
    uri = f"{model._meta.label}:{trigger.name}"
    return ("Django migrates nothing of a model with managed = False: install it in a "
            "migration of your own, once its table exists, with `migrations.RunPython(lambda "
            f"apps, schema_editor: pgtrigger.install({uri!r}, "
            "database=schema_editor.connection.alias))`.")


def _listener_triggers() -> Iterator[tuple[type[models.Model], pgtrigger.Trigger]]:
    """(model, pgtrigger trigger) of every trigger a registered listener is fed by, once."""
    seen: set[str] = set()
    for listener in registry.registered_listeners():
        if not listener.trigger:
            continue
        channel = channels.resolve(listener.channel)
        model = channel.model  # type: ignore[attr-defined]
        uri = f"{model._meta.label}:{listener.trigger}"
        if uri not in seen:
            seen.add(uri)
            for registered, trigger in pgtrigger.registered(uri):
                # pgtrigger annotates the model class it registers as a model instance.
                yield typing.cast(type[models.Model], registered), trigger


@checks.register()
def check_pgtrigger_installed(app_configs: Any = None,
                              **kwargs: Any) -> list[checks.CheckMessage]:
    """pgcelery installs its triggers through django-pgtrigger's migrations."""
    if apps.is_installed("pgtrigger"):
        return []
    return [checks.Error(
        "django-pgtrigger is not in INSTALLED_APPS: pgcelery installs its listeners' "
        "triggers through it, so no write a trigger listener watches would be recorded.",
        hint="Add 'pgtrigger' to INSTALLED_APPS, then run makemigrations and migrate.",
        id="pgcelery.E002",
    )]


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The ``PGCELERY_*`` settings, as the bridge reads them at start."""
    try:
        conf.check()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), hint="Correct the setting named; the bridge would not "
                             "start with it.", id="pgcelery.E003")]
    return []


def _celery_app() -> Any:
    """The Celery app the bridge would publish with; None where the settings name one that
    does not load (pgcelery.E003 says why)."""
    try:
        return publish.celery_app()
    except ImproperlyConfigured:
        return None


@checks.register()
def check_celery_app(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A Celery app of the project's own."""
    app = _celery_app()
    if app is not None and celery_internals.is_fallback_app(app):
        return [checks.Warning(
            "No Celery app is loaded: the bridge would publish with Celery's defaults (an AMQP "
            "broker on localhost) and the listeners' tasks belong to no configured app.",
            hint="Import your Celery app in your project package's __init__.py (`from .celery "
                 "import app as celery_app`, as Celery's Django guide does), or set "
                 "PGCELERY_CELERY_APP to its dotted path.",
            id="pgcelery.W002",
        )]
    return []


@checks.register(deploy=True)
def check_workers_keep_connections(app_configs: Any = None,
                                   **kwargs: Any) -> list[checks.CheckMessage]:
    """Workers that keep their database connection between tasks: a production concern,
    so ``check --deploy`` reports it, not every ``manage.py`` command of a new project."""
    app = _celery_app()
    if (app is not None and not celery_internals.is_fallback_app(app)
            and celery_internals.db_reuse_max(app) is None):
        return [checks.Warning(
            "CELERY_DB_REUSE_MAX is not set: Celery's workers close the database connections "
            "after every task, so each listener task opens a new connection.",
            hint="Set CELERY_DB_REUSE_MAX (e.g. 1000) in the settings Celery reads, and close "
                 "stale connections around tasks as Django does around requests "
                 "(django.db.close_old_connections on task_prerun and task_postrun).",
            id="pgcelery.W004",
        )]
    return []


@checks.register()
def check_databases_drained(app_configs: Any = None,
                            **kwargs: Any) -> list[checks.CheckMessage]:
    """Every PostgreSQL database that gets pgcelery's outbox is drained by the bridge.

    Notifications are recorded in the database of the write or of ``notify(using=...)``;
    one that no bridge drains keeps them forever.
    """
    try:
        drained = conf.databases()
    except ImproperlyConfigured:  # pgcelery.E003 says why
        return []
    return [checks.Warning(
        f"Database {alias!r} gets pgcelery's outbox (its migrations are allowed there), but "
        f"PGCELERY_DATABASES ({drained!r}) does not list it: notifications written to it "
        "would never be published.",
        hint=f"Add {alias!r} to PGCELERY_DATABASES (or run a bridge with --database and list "
             "it there too), or keep pgcelery's migrations out of it with a database router.",
        obj=alias,
        id="pgcelery.W003",
    ) for alias in settings.DATABASES
        if alias not in drained and connections[alias].vendor == "postgresql"
        and router.allow_migrate_model(alias, Notification)]


@checks.register()
def check_atomic_above_listeners(app_configs: Any = None,
                                 **kwargs: Any) -> list[checks.CheckMessage]:
    """``@transaction.atomic`` written above a listener decorator, as django-pgpubsub's
    users write it, wraps the module's name for the task, not what the worker runs."""
    warnings: list[checks.CheckMessage] = []
    for listener in registry.registered_listeners():
        module_name, _, attribute = listener.task_name.rpartition(".")
        found = getattr(sys.modules.get(module_name), attribute, None)
        if _wrapped_in_atomic(found):
            warnings.append(checks.Warning(
                f"{listener.task_name} is wrapped in transaction.atomic above its listener "
                "decorator: the worker runs the task, without the transaction.",
                hint="Remove @transaction.atomic and pass atomic=True to the listener "
                     "decorator: the listener then runs in a transaction, its effects once.",
                obj=listener.task_name,
                id="pgcelery.W005",
            ))
    return warnings


def _wrapped_in_atomic(found: object) -> bool:
    if not isinstance(found, types.FunctionType) or not hasattr(found, "__wrapped__"):
        return False
    return isinstance(inspect.getclosurevars(found).nonlocals.get("self"), transaction.Atomic)
