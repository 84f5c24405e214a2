"""System checks: pgcelery's misconfigurations reported by ``manage.py check`` and ``migrate``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from django.core import checks
from django.db.migrations import Migration
from django.db.migrations.loader import MigrationLoader
from pgtrigger import compiler
from pgtrigger.migrations import AddTrigger

from pgcelery import sql

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
