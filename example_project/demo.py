"""The blog example end to end: migrate, start the bridge and a worker, write, watch.

Creates authors (a trigger notification each) and reads a post (a ``notify`` each),
then prints how every notification became a Celery task and what the task returned.
Uses DATABASE_URL and CELERY_BROKER_URL; creates the database if it is missing.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

HERE = Path(__file__).resolve().parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
sys.path.insert(0, str(HERE))

TIMEOUT = 60.0
PUBLISHED = re.compile(r"Notification (\d+) on (\S+) -> task (\S+)\[([0-9a-f-]+)\]")
SUCCEEDED = re.compile(r"Task (\S+)\[([0-9a-f-]+)\] succeeded in [\d.e-]+s: (.*)")


def create_database() -> None:
    from django.conf import settings

    db = settings.DATABASES["default"]
    params = {"dbname": "postgres", "user": db["USER"], "password": db["PASSWORD"],
              "host": db["HOST"], "port": db["PORT"]}
    connection = psycopg2.connect(**{k: v for k, v in params.items() if v})
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]])
        if cursor.fetchone() is None:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
            print(f"Created database {db['NAME']!r}.")
    connection.close()


def start(name: str, *argv: str, logs: Path) -> tuple[subprocess.Popen, Path]:
    log = logs / f"{name}.log"
    process = subprocess.Popen(argv, cwd=HERE, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return process, log


def wait_for(what: str, predicate) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"Timed out waiting for {what}.")
        time.sleep(0.2)


def main() -> int:
    import django

    django.setup()
    create_database()
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=HERE,
                   check=True)

    from blog.models import Author, Post, PostReadCount

    logs = HERE / ".demo-logs"
    logs.mkdir(exist_ok=True)
    bridge, bridge_log = start("bridge", sys.executable, "manage.py", "pgcelery_bridge",
                               "--loglevel", "DEBUG", logs=logs)
    worker, worker_log = start("worker", sys.executable, "-m", "celery", "-A", "proj", "worker",
                               "--queues", "celery,stats", "--concurrency", "2",
                               "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                               logs=logs)
    try:
        wait_for("the bridge", lambda: "Bridge started" in bridge_log.read_text())
        wait_for("the worker", lambda: "ready." in worker_log.read_text())
        print("Bridge and worker are running.\n")

        authors = [Author.objects.create(name=name) for name in ("Ada", "Grace", "Barbara")]
        print(f"Created authors {', '.join(a.name for a in authors)}: one trigger "
              "notification each.")
        wait_for("the welcome posts",
                 lambda: Post.objects.filter(author__in=authors).count() == len(authors))
        post = Post.objects.filter(author=authors[0]).get()
        for _ in range(3):
            Post.fetch(post.pk)
        print(f"Read post #{post.pk} three times: one notify() each.")
        wait_for("the read count", lambda: PostReadCount.objects.filter(post=post, count=3)
                 .exists())
        wait_for("every task result", lambda: len(SUCCEEDED.findall(worker_log.read_text())) >= 6)
    finally:
        bridge.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGTERM)
        bridge_code, _ = bridge.wait(30), worker.wait(30)

    results = {task_id: result for _, task_id, result in SUCCEEDED.findall(worker_log.read_text())}
    print("\nNotification -> Celery task -> result")
    for notification_id, channel, task, task_id in PUBLISHED.findall(bridge_log.read_text()):
        print(f"  #{notification_id} {channel}\n      -> {task}[{task_id}]\n      "
              f"-> returned {results.get(task_id, '(no result)')}")
    for author in authors:
        print(f"{author.name} has {author.posts.count()} post(s): "
              f"{author.posts.get().content!r}")
    count = PostReadCount.objects.get(post=post)
    print(f"Post #{post.pk} was read {count.count} time(s) on {count.date}.")
    print(f"Bridge exited with {bridge_code} after SIGTERM. Logs are in {logs}.")
    return 0 if bridge_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
