"""How listeners' triggers meet the apps' migrations.

``makemigrations`` writes each listener's trigger into the migrations of the app that owns
the model (through django-pgtrigger). pgcelery adds what that leaves out:

- the dependency on the pgcelery migration that creates the function the trigger calls, so
  that ``migrate`` orders them without a hand edit;
- the rendering of the trigger that the migrations already hold: a trigger an earlier
  release wrote stays as written while its listener is unchanged, so an upgrade needs no
  new migration (see ``pgcelery.triggers.ListenerTrigger``);
- the order and the models django-pgtrigger gets wrong: a trigger added to a renamed table
  goes after the rename, and an unmanaged model's triggers stay out.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pgtrigger
from django.core.management.commands import makemigrations, migrate
from django.db.migrations import AlterModelTable, Migration
from django.db.migrations.state import ProjectState
from pgtrigger import compiler
from pgtrigger.migrations import AddTrigger

from pgcelery import sql

PGCELERY = "pgcelery"

_FUNCTIONS = "|".join(map(re.escape, sql.FUNCTION_MIGRATIONS))
_CALLED = re.compile(rf"\b({_FUNCTIONS})\(")
#: A trigger that executes pgcelery's function itself cannot be created before it exists.
_EXECUTED = re.compile(rf"EXECUTE\s+(?:PROCEDURE|FUNCTION)\s+({_FUNCTIONS})\(")

#: The migration state that listener triggers compile against, while one is known.
_migrated: contextvars.ContextVar[ProjectState | None] = contextvars.ContextVar(
    "pgcelery_migrated_state", default=None)


@contextlib.contextmanager
def compiled_against(state: ProjectState) -> Iterator[None]:
    """Listener triggers compiled in this block keep the rendering ``state`` holds."""
    token = _migrated.set(state)
    try:
        yield
    finally:
        _migrated.reset(token)


def adopted(model: Any, renderings: Sequence[pgtrigger.Trigger]) -> compiler.Trigger:
    """``model``'s trigger compiled as the migrations hold it, where that is one of
    ``renderings`` (newest first); else as the newest. The earlier renderings are compiled
    only where the migrations hold another SQL under the trigger's name."""
    newest = renderings[0].compile(model)
    migrated = _migrated_trigger(model, newest.name)
    if migrated is None or migrated == newest:
        return newest
    earlier = (rendering.compile(model) for rendering in renderings[1:])
    return migrated if migrated in earlier else newest


def _migrated_trigger(model: Any, name: str | None) -> compiler.Trigger | None:
    state = _migrated.get()
    key = (model._meta.app_label, model._meta.model_name)
    model_state = state.models.get(key) if state is not None else None
    if model_state is None:
        return None
    return next((found for found in model_state.options.get("triggers", [])
                 if found.name == name), None)


def pgcelery_calls(operations: Iterable[Any], *,
                   executed_only: bool = False) -> Iterator[tuple[str, str]]:
    """(trigger name, pgcelery migration) of each pgcelery function that a trigger these
    operations add calls (``executed_only``: executes directly, as its trigger function)."""
    pattern = _EXECUTED if executed_only else _CALLED
    for operation in operations:
        if isinstance(operation, AddTrigger) and isinstance(operation.trigger, compiler.Trigger):
            for function in pattern.findall(str(operation.trigger.sql)):
                yield operation.trigger.name or "", sql.FUNCTION_MIGRATIONS[function]


def _add_pgcelery_dependencies(migration: Migration) -> None:
    needed = {(PGCELERY, name) for _, name in pgcelery_calls(migration.operations)}
    # The autodetector's migrations each hold a list of their own.
    dependencies: list[tuple[str, str]] = migration.dependencies  # type: ignore[assignment]
    dependencies.extend(sorted(needed - set(dependencies)))


def _leave_out_unmanaged_triggers(state: ProjectState) -> None:
    """Django migrates nothing of a ``managed = False`` model but its state, and so neither
    does django-pgtrigger: its triggers, left in the model's options, could not even be
    written into a migration. The bridge says at start how to install them
    (``checks.uninstalled_listener_triggers``)."""
    for model_state in state.models.values():
        if not model_state.options.get("managed", True):
            model_state.options.pop("triggers", None)


def _add_triggers_after_table_renames(migration: Migration) -> None:
    """Moves the triggers added to a model whose table the migration renames after the
    rename: the autodetector puts them first, on a table that does not exist yet."""
    operations: list[Any] = migration.operations  # type: ignore[assignment]
    renamed = {operation.name_lower for operation in operations
               if isinstance(operation, AlterModelTable)}
    moved = [operation for operation in operations if isinstance(operation, AddTrigger)
             and operation.model_name_lower in renamed]
    if moved:
        kept = [operation for operation in operations
                if not any(operation is found for found in moved)]
        operations[:] = [*kept, *moved]


class AutodetectorMixin:
    """Adds what pgcelery's triggers need to the migrations the autodetector writes.

    ``_detect_changes`` and ``_build_migration_list`` are Django's own steps of the
    autodetector (the same from Django 4.2 to 5.2); ``tests/test_user_project.py`` runs the
    real ``makemigrations`` through them.
    """

    from_state: ProjectState
    to_state: ProjectState
    migrations: dict[str, list[Migration]]

    def _detect_changes(self, *args: Any, **kwargs: Any) -> Any:
        _leave_out_unmanaged_triggers(self.to_state)
        with compiled_against(self.from_state):
            return super()._detect_changes(*args, **kwargs)  # type: ignore[misc]

    def _build_migration_list(self, *args: Any, **kwargs: Any) -> None:
        super()._build_migration_list(*args, **kwargs)  # type: ignore[misc]
        for app_label, migrations in self.migrations.items():
            for migration in migrations:
                _add_triggers_after_table_renames(migration)
                if app_label != PGCELERY:
                    _add_pgcelery_dependencies(migration)


def install() -> None:
    """Puts the mixin into the autodetector of ``makemigrations`` and ``migrate``, as
    django-pgtrigger puts its own (in either order of the two apps): one class for both,
    as Django 5.2 requires."""
    autodetector: Any = makemigrations.MigrationAutodetector  # type: ignore[attr-defined]
    if not issubclass(autodetector, AutodetectorMixin):
        autodetector = type("MigrationAutodetector", (AutodetectorMixin, autodetector), {})
    makemigrations.MigrationAutodetector = autodetector  # type: ignore[attr-defined]
    migrate.MigrationAutodetector = autodetector  # type: ignore[attr-defined]
    for command in (makemigrations.Command, migrate.Command):
        if hasattr(command, "autodetector"):  # Django >= 5.2
            command.autodetector = autodetector
