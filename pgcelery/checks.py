"""System checks: pgcelery's misconfigurations reported by ``manage.py check`` and ``migrate``."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from typing import Any

import pgtrigger
from django.core import checks
from django.db import models
from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from pgtrigger import compiler, features
from pgtrigger.migrations import AddTrigger

from pgcelery import channels, registry, sql

_FUNCTION_CALL = re.compile(r"\b(" + "|".join(map(re.escape, sql.FUNCTION_MIGRATIONS)) + r")\(")


@checks.register(checks.Tags.database)
def check_trigger_migrations(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every migration that installs a pgcelery trigger runs after the pgcelery migration
    that creates the function its trigger calls.

    ``migrate`` runs apps' migrations in no set order between apps: without the dependency,
    a write in a later migration of the app (a data migration) can fire a trigger whose
    function does not exist yet. Tagged ``database``, so ``migrate`` runs it.
    """
    loader = MigrationLoader(None, ignore_no_migrations=True)
    errors: list[checks.CheckMessage] = []
    for key, migration in sorted(loader.disk_migrations.items()):
        if key[0] == "pgcelery":
            continue
        before = set(loader.graph.forwards_plan(key))
        for trigger, function in _pgcelery_calls(migration):
            needed = ("pgcelery", sql.FUNCTION_MIGRATIONS[function])
            if needed not in before:
                errors.append(checks.Error(
                    f"Migration {key[0]}.{key[1]} installs trigger {trigger!r}, which calls "
                    f"{function}() from migration pgcelery.{needed[1]}, but does not depend "
                    "on it.",
                    hint=f"Add {needed!r} to the dependencies of {key[0]}.{key[1]}.",
                    obj=f"{key[0]}.{key[1]}",
                    id="pgcelery.E001",
                ))
                break
    return errors


def _pgcelery_calls(migration: Migration) -> Iterator[tuple[str, str]]:
    """(trigger name, pgcelery function) for each pgcelery function a trigger added calls."""
    for operation in migration.operations:
        if isinstance(operation, AddTrigger) and isinstance(operation.trigger, compiler.Trigger):
            for function in _FUNCTION_CALL.findall(str(operation.trigger.sql)):
                yield operation.trigger.name or "", function


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
        if app_label in loader.unmigrated_apps:
            continue
        migrated = state.models.get((app_label, model_name))
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
