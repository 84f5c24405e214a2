"""Who may execute pgcelery's stored functions.

The functions run as their owner (``SECURITY DEFINER``), so EXECUTE on one is the privilege
of what it does: the writer functions record notifications; the worker's functions keep its
records (the task ids of ``atomic=True`` runs, finished and failed deliveries), which a
writer must not forge. PostgreSQL lets every role (PUBLIC) execute a new function. With
``PGCELERY_APP_ROLES`` or ``PGCELERY_WORKER_ROLES`` set, every ``migrate`` leaves each
function executable by its owner and by the roles that need it, and by no one else.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connections, router

from pgcelery import conf, sql
from pgcelery.models import Notification

#: The functions the writers' triggers and ``notify()`` call; every other function of
#: pgcelery's, whatever its version, is the worker's.
WRITER_FUNCTIONS = frozenset(sql.FUNCTION_MIGRATIONS)
#: The grantee ``aclexplode`` reports for PUBLIC.
PUBLIC = "PUBLIC"

#: pgcelery's functions in the outbox's schema, their owner, and who else may execute
#: them: (function, name, owner, grantees), PUBLIC written so.
FUNCTIONS = r"""
SELECT p.oid::regprocedure::text, p.proname::text, pg_get_userbyid(p.proowner),
       coalesce(array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                               ELSE pg_get_userbyid(a.grantee) END)
                FILTER (WHERE a.grantee <> p.proowner), '{}')
FROM pg_proc AS p
LEFT JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) AS a
    ON a.privilege_type = 'EXECUTE'
WHERE p.proname LIKE 'pgcelery\_%'
  AND p.pronamespace = (SELECT relnamespace FROM pg_class
                        WHERE oid = to_regclass('pgcelery_notification'))
GROUP BY p.oid
ORDER BY 1
"""
#: The roles of a list that the database has.
EXISTING_ROLES = "SELECT rolname::text FROM pg_roles WHERE rolname = ANY(%s)"


def executors(name: str, app_roles: list[str], worker_roles: list[str]) -> set[str]:
    """Who besides the owner may execute function ``name``: the app and worker roles a
    writer function (listeners write too), the worker roles the worker's."""
    if name in WRITER_FUNCTIONS:
        return {*app_roles, *worker_roles}
    return set(worker_roles)


def changes(functions: Iterable[tuple[str, str, str, list[str]]], app_roles: list[str],
            worker_roles: list[str]) -> list[str]:
    """The GRANT and REVOKE statements that leave each function executable by its owner and
    the roles that need it."""
    statements = []
    for function, name, owner, grantees in functions:
        wanted = executors(name, app_roles, worker_roles) - {owner}
        for role in sorted(set(grantees) - wanted):
            grantee = role if role == PUBLIC else sql.identifier(role)
            statements.append(f"REVOKE EXECUTE ON FUNCTION {function} FROM {grantee}")
        for role in sorted(wanted - set(grantees)):
            statements.append(f"GRANT EXECUTE ON FUNCTION {function} TO {sql.identifier(role)}")
    return statements


def missing_roles(using: str, roles: Iterable[str]) -> list[str]:
    """The roles of ``roles`` that database ``using`` does not have."""
    named = sorted(set(roles))
    with connections[using].cursor() as cursor:
        cursor.execute(EXISTING_ROLES, [named])
        existing = {role for (role,) in cursor.fetchall()}
    return [role for role in named if role not in existing]


def configured_roles() -> tuple[list[str], list[str]] | None:
    """(app roles, worker roles) when either setting is set; None leaves EXECUTE as it is."""
    app_roles, worker_roles = conf.app_roles(), conf.worker_roles()
    if app_roles is None and worker_roles is None:
        return None
    return app_roles or [], worker_roles or []


def apply(using: str) -> None:
    """Sets who may execute pgcelery's functions in database ``using``, as the settings say.
    A role the database does not have is left out (``pgcelery.W008`` names it)."""
    configured = configured_roles()
    if configured is None:
        return
    absent = set(missing_roles(using, [*configured[0], *configured[1]]))
    app_roles = [role for role in configured[0] if role not in absent]
    worker_roles = [role for role in configured[1] if role not in absent]
    with connections[using].cursor() as cursor:
        cursor.execute(FUNCTIONS)
        for statement in changes(cursor.fetchall(), app_roles, worker_roles):
            cursor.execute(statement)


def on_migrate(using: str = "default", **kwargs: Any) -> None:
    """``post_migrate``: every ``migrate`` applies the settings, so a role added to them gets
    its privileges with the next one."""
    if connections[using].vendor != "postgresql" or not router.allow_migrate_model(
            using, Notification):
        return
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT to_regclass('pgcelery_notification') IS NOT NULL")
        [(migrated,)] = cursor.fetchall()
    if migrated:
        apply(using)
