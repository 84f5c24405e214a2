"""pgcelery's soak: writers at a steady rate for a set time, the bridge and a worker running.

    python bench/soak.py [--minutes 10] [--rate 100]      (make soak)

Every 30 s it records the outbox's rows, its table size and dead tuples, the bridge's RSS
and the age of the oldest pending notification; at the end it checks that every row's
listener ran exactly once. Prints the table and writes it to bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run  # noqa: E402  (sets Django up with the benchmark's settings)

#: Seconds between two samples.
SAMPLE_EVERY = 30.0

SAMPLE = """
SELECT count(*), pg_total_relation_size('pgcelery_notification'),
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'pgcelery_notification'),
       extract(epoch FROM now() - min(created_at))
FROM pgcelery_notification
"""


def sample(elapsed: float, written: int, bridge: run.Process) -> str:
    with run.connection.cursor() as cursor:
        cursor.execute(SAMPLE)
        rows, size, dead, oldest = cursor.fetchone()
    rss = run.psutil.Process(bridge.popen.pid).memory_info().rss / 2**20
    return (f"| {elapsed / 60:.1f} | {written:,} | {rows:,} | {size / 2**10:,.0f} kB | "
            f"{dead or 0:,} | {rss:.1f} MB | {oldest or 0:.2f} s |")


def soak(minutes: float, rate: float) -> str:
    run.reset()
    workers, bridge = run.worker(), run.bridge()
    lines = ["| minute | rows written | outbox rows | outbox size | dead tuples | bridge RSS | "
             "oldest pending |", "|---|---|---|---|---|---|---|"]
    started = time.monotonic()
    duration = minutes * 60
    written, next_sample = 0, 0.0
    while (elapsed := time.monotonic() - started) < duration:
        if elapsed >= next_sample:
            lines.append(sample(elapsed, written, bridge))
            print(lines[-1], flush=True)
            next_sample += SAMPLE_EVERY
        time.sleep(max(0.0, started + written / rate - time.monotonic()))
        run.execute("INSERT INTO benchapp_source (n) VALUES (%s)", [written])
        written += 1
    run.wait_until(lambda: run.hits("pgcelery") >= written, timeout=600, interval=0.5)
    lines.append(sample(time.monotonic() - started, written, bridge))
    bridge.stop()
    workers.stop()
    with run.connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT n), count(*) FROM benchapp_hit "
                       "WHERE via = 'pgcelery'")
        distinct, total = cursor.fetchone()
    verdict = ("every row's listener ran exactly once" if distinct == total == written else
               f"FAILED: {written:,} written, {distinct:,} distinct runs, {total:,} runs")
    return (f"# pgcelery soak\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
            f" UTC — {run.versions()}\n\n{minutes:g} minutes of single-row inserts at "
            f"{rate:g}/s, bridge and worker (prefork -c 2) running.\n\n"
            + "\n".join(lines) + f"\n\n{written:,} rows: {verdict}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0, help="rows per second")
    arguments = parser.parse_args()
    run.create_database()
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=run.EXAMPLE,
                   check=True, env={**os.environ,
                                    "PYTHONPATH": f"{run.ROOT}{os.pathsep}{run.EXAMPLE}"})
    try:
        report = soak(arguments.minutes, arguments.rate)
    finally:
        for process in list(run.Process.running):
            process.stop()
    print(report)
    (run.ROOT / "bench" / "results" / "soak.md").write_text(report)
    if "FAILED" in report:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
