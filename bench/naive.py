"""The naive bridge: LISTEN on a pg_notify trigger and apply_async each notification.

No outbox, no batching, no recovery: what is committed while it is down is lost. It is the
baseline the benchmark measures pgcelery against. Run as ``python -m bench.naive`` with
DJANGO_SETTINGS_MODULE=bench.settings.
"""

import select

import psycopg2


def main() -> None:
    import django

    django.setup()
    from django.db import connection

    from bench.benchapp.listeners import QUEUE, naive_hit

    conn = psycopg2.connect(**connection.get_connection_params())
    conn.autocommit = True
    conn.cursor().execute("LISTEN bench_naive")
    print("naive bridge listening", flush=True)
    while True:
        select.select([conn], [], [], 5)
        conn.poll()
        for notification in conn.notifies:
            naive_hit.apply_async(args=[int(notification.payload)], queue=QUEUE)
        conn.notifies.clear()


if __name__ == "__main__":
    main()
