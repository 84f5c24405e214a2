"""pgcelery's benchmark: every figure next to a baseline measured in the same run.

    python bench/run.py [--quick]      (make bench / make bench-quick)

Baselines: the naive bridge (bench/naive.py: LISTEN on a bare pg_notify trigger,
apply_async per notification), the worker draining pre-queued tasks, the broker taking
pre-built messages (one LPUSH per batch, no Postgres), the same table written with no
trigger and with a bare pg_notify trigger, and a listener taking one task per row. Prints
one table and writes it to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import functools
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example_project"
sys.path[:0] = [str(ROOT), str(EXAMPLE)]
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"

import django  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

django.setup()

from celery import current_app  # noqa: E402
from demo import create_database  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

import pgcelery  # noqa: E402
from bench.benchapp.channels import Blob, FailingTick, KeptTick, KeyedTick, Tick  # noqa: E402
from bench.benchapp.listeners import QUEUE  # noqa: E402
from bench.benchapp.models import Hit, Source  # noqa: E402

#: Spans are recorded and sampled in the benchmark's writers, as in a traced project.
trace.set_tracer_provider(TracerProvider())


@dataclass(frozen=True)
class Sizes:
    drain: int
    end_to_end: int
    paced_seconds: float
    single_rows: int
    bulk_rows: int
    memory_backlog: int
    large_rows: int
    batch_rows: int


#: Runs of the short measures (drain, write cost) whose median is reported.
REPEATS = 3
#: Notifications sent before the latency is measured.
WARM_UP = 20
FULL = Sizes(50_000, 20_000, 20.0, 5_000, 50_000, 1_000_000, 80, 100_000)
QUICK = Sizes(10_000, 4_000, 4.0, 1_000, 20_000, 100_000, 20, 20_000)
#: Messages per LPUSH in the broker's ceiling: the bridge's batch.
LPUSH_BATCH = 500
#: The port of the bridge's /metrics when the benchmark measures them.
METRICS_PORT = 9471


@dataclass
class Row:
    what: str
    pgcelery: float
    baseline: float
    unit: str
    target: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.pgcelery / self.baseline
        return self.baseline / self.pgcelery if self.pgcelery else float("inf")


# -- processes ---------------------------------------------------------------------------


class Process:
    running: list[Process] = []

    def __init__(self, name: str, *argv: str, ready: str, **env: str) -> None:
        self.log = ROOT / "bench" / "results" / f"{name}.log"
        self.popen = subprocess.Popen(
            argv, cwd=EXAMPLE, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)]), **env},
        )
        self.running.append(self)
        wait_until(lambda: ready in self.log.read_text(), 60)

    def stop(self) -> None:
        self.running.remove(self)
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def bridge(*options: str, **env: str) -> Process:
    return Process("bridge", sys.executable, "manage.py", "pgcelery_bridge", "--loglevel",
                   "INFO", *options, ready="Bridge started", **env)


def naive() -> Process:
    return Process("naive", sys.executable, "-m", "bench.naive", ready="listening")


def worker() -> Process:
    return Process("worker", sys.executable, "-m", "celery", "-A", "proj", "worker", "--pool",
                   "prefork", "--concurrency", "2", "--prefetch-multiplier", "16",
                   "--queues", QUEUE, "--loglevel", "WARNING",
                   "--without-gossip", "--without-mingle", "--without-heartbeat",
                   ready="celery@")


def wait_until(predicate, timeout: float = 600.0, interval: float = 0.02) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"benchmark step timed out after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic()


# -- database and broker -----------------------------------------------------------------


def execute(query: str, params=()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(query, params)


def scalar(query: str):
    with connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchone()[0]


def outbox_empty() -> bool:
    """Whether the bridge has published everything; cheap enough to ask often while it works."""
    return scalar("SELECT NOT EXISTS (SELECT FROM pgcelery_notification "
                  "WHERE failed_at IS NULL ORDER BY id LIMIT 1)")


def hits(via: str) -> int:
    return Hit.objects.filter(via=via).count()


def queued() -> int:
    with current_app.connection_for_write() as conn:
        try:
            return conn.default_channel.queue_declare(QUEUE, passive=True).message_count
        except conn.channel_errors:
            return 0


def reset() -> None:
    execute("TRUNCATE pgcelery_notification, pgcelery_delivery, pgcelery_waiting, benchapp_source, "
            "benchapp_plain, benchapp_naivesource, benchapp_baresource, benchapp_batchsource, "
            "benchapp_hit")
    with current_app.connection_for_write() as conn, contextlib.suppress(conn.channel_errors):
        conn.default_channel.queue_purge(QUEUE)


def insert_many(table: str, count: int) -> float:
    """Inserts ``count`` rows in one statement; returns the time of the commit."""
    execute(f"INSERT INTO {table} (n) SELECT generate_series(1, %s)", [count])
    return time.monotonic()


# -- measurements ------------------------------------------------------------------------


def median_of_runs(*measures):
    """Median of each measure over REPEATS runs, the measures taking turns, so that a slow
    moment of a shared machine does not fall on one side only."""
    runs = [[measure() for measure in measures] for _ in range(REPEATS)]
    return [statistics.median(values) for values in zip(*runs, strict=True)]


def drain(sizes: Sizes) -> list[Row]:
    """Publish rate with no worker: pgcelery on a committed backlog, the naive bridge live,
    and the broker's own ceiling: the messages pgcelery published, pushed again as they are,
    one LPUSH per batch."""
    published: list[bytes] = []

    def pgcelery_drain() -> float:
        rate = drain_rate(sizes.drain)
        published[:] = broker_client().lrange(QUEUE, 0, -1)
        return rate

    def lpush_ceiling() -> float:
        client = broker_client()
        client.delete(QUEUE)
        started = time.monotonic()
        for start in range(0, len(published), LPUSH_BATCH):
            client.lpush(QUEUE, *published[start:start + LPUSH_BATCH])
        return len(published) / (time.monotonic() - started)

    def naive_drain() -> float:
        reset()
        process = naive()
        committed = insert_many("benchapp_naivesource", sizes.drain)
        done = wait_until(lambda: queued() >= sizes.drain, interval=0.05)
        process.stop()
        return sizes.drain / (done - committed)

    rate, ceiling_rate, naive_rate = median_of_runs(pgcelery_drain, lpush_ceiling, naive_drain)
    what = f"drain: {sizes.drain:,} notifications published, no worker"
    return [Row(f"{what}, vs the naive bridge", rate, naive_rate, "/s", "≥ 12×"),
            Row(f"{what}, vs pre-built messages, one LPUSH per {LPUSH_BATCH}", rate,
                ceiling_rate, "/s", "≥ 0.6×")]


def drain_rate(count: int, *options: str, scrape: bool = False, **env: str) -> float:
    """Notifications per second the bridge publishes from a backlog of ``count`` committed
    rows (``insert_many``); with ``scrape``, its /metrics read every second meanwhile."""
    reset()
    insert_many("benchapp_source", count)
    process = bridge(*options, **env)
    started = time.monotonic()  # from "Bridge started": process start-up not counted
    with scraping(options) if scrape else contextlib.nullcontext():
        done = wait_until(outbox_empty, interval=0.05)
    process.stop()
    return count / (done - started)


@contextlib.contextmanager
def scraping(options: tuple[str, ...]):
    """Reads the bridge's /metrics every second, as a (busy) Prometheus would."""
    port = options[options.index("--metrics-port") + 1]
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def broker_client() -> redis.Redis:
    return redis.Redis.from_url(current_app.conf.broker_url)


@functools.cache
def worker_ceiling(count: int) -> float:
    """Tasks per second the worker runs alone: ``count`` tasks the bridge queued before the
    worker started (measured once per run)."""
    reset()
    insert_many("benchapp_source", count)
    process = bridge()
    wait_until(outbox_empty, interval=0.05)
    process.stop()
    workers = worker()
    started = time.monotonic()
    done = wait_until(lambda: hits("pgcelery") >= count, interval=0.05)
    workers.stop()
    return count / (done - started)


def end_to_end(sizes: Sizes) -> Row:
    """Bridge and worker together, against the worker alone on the same tasks pre-queued."""
    ceiling = worker_ceiling(sizes.end_to_end)
    reset()
    workers, process = worker(), bridge()
    committed = insert_many("benchapp_source", sizes.end_to_end)
    done = wait_until(lambda: hits("pgcelery") >= sizes.end_to_end, interval=0.05)
    process.stop()
    workers.stop()
    return Row(f"end to end: {sizes.end_to_end:,} through bridge + worker (prefork -c 2)",
               sizes.end_to_end / (done - committed), ceiling, "/s", "≥ 0.9× (ceiling)")


def batches(sizes: Sizes) -> Row:
    """One bulk insert end to end through a ``batch=500`` listener, against the same insert
    through a listener taking one task per row (on fewer rows: it is the slow side)."""

    def inserted(table: str, via: str, count: int) -> float:
        reset()
        workers, process = worker(), bridge()
        committed = insert_many(table, count)
        done = wait_until(lambda: hits(via) >= count, interval=0.05)
        process.stop()
        workers.stop()
        return count / (done - committed)

    batched = inserted("benchapp_batchsource", "batch", sizes.batch_rows)
    single = inserted("benchapp_source", "pgcelery", sizes.end_to_end)
    return Row(f"bulk insert end to end: {sizes.batch_rows:,} rows to a batch=500 listener "
               f"(vs {sizes.end_to_end:,} rows, one task per row)", batched, single, "/s",
               "≥ 10×")


def failed_deliveries() -> int:
    return scalar("SELECT count(*) FROM pgcelery_notification WHERE failed_at IS NOT NULL")


def notify_many(channel: type, count: int, keys: int | None = None) -> None:
    """``count`` notifications, 500 per transaction; of ``keys`` keys in turn, if given."""
    for start in range(0, count, 500):
        with transaction.atomic():
            for n in range(start, min(start + 500, count)):
                fields = {"n": n} if keys is None else {"key": n % keys, "n": n}
                pgcelery.notify(channel, **fields)


def through(count: int, channel: type, done: Callable[[], int],
            keys: int | None = None) -> Callable[[], float]:
    """A measure: ``count`` notifications of ``channel`` written, published and run (``done``
    counts the runs) with a fresh bridge and worker; returns notifications per second."""

    def measure() -> float:
        reset()
        workers, process = worker(), bridge()
        started = time.monotonic()
        notify_many(channel, count, keys)
        finished = wait_until(lambda: done() >= count, interval=0.05)
        process.stop()
        workers.stop()
        return count / (finished - started)

    return measure


def outcomes(sizes: Sizes) -> tuple[Row, Row]:
    """What keeping outcomes costs end to end: a listener with ``redeliver_after``, and one
    whose every run fails and is recorded, each against the same listener without."""
    count = sizes.end_to_end
    kept, failing, plain = median_of_runs(
        through(count, KeptTick, functools.partial(hits, "kept")),
        through(count, FailingTick, failed_deliveries),
        through(count, Tick, functools.partial(hits, "plain")),
    )
    what = f"{count:,} notify() through bridge + worker"
    return (Row(f"{what}, listener with redeliver_after", kept, plain, "/s", "cost, no target"),
            Row(f"{what}, listener failing, each run recorded", failing, plain, "/s",
                "cost, no target"))


#: Keys of the ordered listener's notifications.
KEYS = 100
#: Notifications of one key whose runs follow each other, for the latency of a release.
LATENCY_RUNS = 300


def keyed(sizes: Sizes) -> list[Row]:
    """An ``ordered=True`` listener over ``KEYS`` keys against the same listener without
    options, end to end; and, with one key, how soon its next run starts after the one before
    (the run, its mark as finished, the wake-up, the release, the broker and the worker's
    pick-up), as p50 and p99, against the 20 ms target."""
    count = sizes.end_to_end
    plain, ordered = median_of_runs(
        through(count, Tick, functools.partial(hits, "plain")),
        through(count, KeyedTick, functools.partial(hits, "keyed"), KEYS),
    )
    through(LATENCY_RUNS, KeyedTick, functools.partial(hits, "keyed"), 1)()
    starts = list(Hit.objects.filter(via="keyed").order_by("n").values_list("started", flat=True))
    gaps = [1000 * (later - earlier) for earlier, later in zip(starts, starts[1:], strict=False)]
    p50, p99 = (statistics.quantiles(gaps, n=100)[index] for index in (49, 98))
    what = f"{count:,} notify() over {KEYS} keys through bridge + worker"
    one = f"one key, {LATENCY_RUNS} notifications: its next run after the one before"
    return [Row(f"{what}, ordered=True vs the same listener without options", ordered, plain,
                "/s", "≥ 0.7×"),
            Row(f"{one}, p50 (vs the target)", p50, 20.0, " ms", "p50 ≤ 20 ms",
                higher_is_better=False),
            Row(f"{one}, p99 (vs the p50 target)", p99, 20.0, " ms", "measured",
                higher_is_better=False)]


def paced(sizes: Sizes, rate: int) -> tuple[Row, Row, Row]:
    """Commit → task start latency, single-row transactions at ``rate`` per second.

    Each side runs REPEATS times, the two taking turns, and its latencies are pooled: a slow
    moment of a shared machine (its worker's ceiling drifts by a third within minutes here)
    then falls on both sides, not on whichever ran during it.
    """
    sides = (("pgcelery", "benchapp_source", bridge), ("naive", "benchapp_naivesource", naive))
    latencies: dict[str, list[float]] = {via: [] for via, _, _ in sides}
    for _ in range(REPEATS):
        for via, table, start in sides:
            latencies[via] += paced_run(via, table, start, rate, sizes.paced_seconds)
    results = {via: statistics.quantiles(sorted(values), n=100)
               for via, values in latencies.items()}
    # Ratios are naive ÷ pgcelery: p50 no slower than naive's, p99 at most 1.5× naive's.
    targets = {"p50": "≥ 1.0×", "p99": "≥ 0.67×"}
    return tuple(
        Row(f"latency at {rate}/s (half the worker's ceiling), commit → task start, {label}",
            results["pgcelery"][index], results["naive"][index], " ms", targets.get(label, ""),
            higher_is_better=False)
        for label, index in (("p50", 49), ("p95", 94), ("p99", 98))
    )


def paced_run(via: str, table: str, start, rate: int, seconds: float) -> list[float]:
    """Latencies (ms) of ``seconds`` of single-row inserts into ``table`` at ``rate``/s,
    through the bridge ``start`` starts and a worker."""
    reset()
    workers, process = worker(), start()
    # Warm-up rows (negative n, not measured): each worker process opens its database
    # connection and each bridge its route before the measured ones.
    for n in range(-WARM_UP, 0):
        execute(f"INSERT INTO {table} (n) VALUES (%s)", [n])
    wait_until(lambda: hits(via) >= WARM_UP, interval=0.05)
    count = int(rate * seconds)
    committed = {}
    first = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, first + n / rate - time.monotonic()))
        execute(f"INSERT INTO {table} (n) VALUES (%s)", [n])
        committed[n] = time.time()
    wait_until(lambda: hits(via) >= WARM_UP + count, interval=0.05)
    process.stop()
    workers.stop()
    return [(started - committed[n]) * 1000 for n, started in
            Hit.objects.filter(via=via, n__gte=0).values_list("n", "started")]


def write_cost(sizes: Sizes) -> tuple[Row, Row, Row]:
    """Rows per second into a table with pgcelery's trigger, with none, and with a bare
    ``pg_notify(to_jsonb(NEW))`` trigger."""

    def single(table: str) -> float:
        reset()
        started = time.monotonic()
        for n in range(sizes.single_rows):
            execute(f"INSERT INTO {table} (n) VALUES (%s)", [n])
        return sizes.single_rows / (time.monotonic() - started)

    def bulk(table: str) -> float:
        reset()
        started = time.monotonic()
        return sizes.bulk_rows / (insert_many(table, sizes.bulk_rows) - started)

    single_rate, plain_single, bare_single, bulk_rate, plain_bulk = median_of_runs(
        *(functools.partial(single, table) for table in ("benchapp_source", "benchapp_plain",
                                                         "benchapp_baresource")),
        *(functools.partial(bulk, table) for table in ("benchapp_source", "benchapp_plain")))
    reset()
    return (
        Row("write cost: single-row transactions, trigger vs none", single_rate, plain_single,
            "/s", "≥ 0.80×"),
        Row("write cost: single-row transactions, trigger vs a bare pg_notify(to_jsonb(NEW)) "
            "trigger", single_rate, bare_single, "/s", "≥ 0.85×"),
        Row(f"write cost: one {sizes.bulk_rows:,}-row INSERT…SELECT, trigger vs none",
            bulk_rate, plain_bulk, "/s", "≥ 0.50×"),
    )


def memory(sizes: Sizes) -> Row:
    """Peak RSS of the bridge draining a large backlog (no worker), against its idle RSS."""
    reset()
    process = bridge()
    idle = psutil.Process(process.popen.pid).memory_info().rss
    process.stop()
    insert_many("benchapp_source", sizes.memory_backlog)
    process = bridge()
    peak = peak_rss(process)
    process.stop()
    reset()
    return Row(f"memory: bridge peak RSS draining {sizes.memory_backlog:,} rows (vs idle)",
               peak, idle / 2**20, " MB", "< 150 MB", higher_is_better=False)


def peak_rss(process: Process) -> float:
    """The process's peak RSS in MB while the outbox drains."""
    watched = psutil.Process(process.popen.pid)
    peak = 0
    while not outbox_empty():
        peak = max(peak, watched.memory_info().rss)
        time.sleep(0.02)
    return peak / 2**20


def large_rows(sizes: Sizes) -> list[Row]:
    """Peak RSS of the bridge draining a backlog of 10 MB rows: with the default
    PGCELERY_BATCH_BYTES (64 MB), against no byte budget (the batch size alone). Random
    data is stored at its size; one letter repeated compresses to a few kilobytes."""

    def drained(data: str, **env: str) -> float:
        reset()
        for n in range(sizes.large_rows):
            with transaction.atomic():
                pgcelery.notify(Blob, n=n, data=data[n:] + data[:n])
        process = bridge(**env)
        peak = peak_rss(process)
        process.stop()
        reset()
        return peak

    rows = []
    for kind, data in (("random", base64.b64encode(os.urandom(7_864_320)).decode()),
                       ("one letter", "x" * 10 * 2**20)):
        bounded, unbounded = drained(data), drained(data, PGCELERY_BATCH_BYTES=str(2**62))
        rows.append(Row(f"memory: bridge peak RSS draining {sizes.large_rows} rows of 10 MB of "
                        f"{kind} (vs no byte budget)", bounded, unbounded, " MB", "bounded",
                        higher_is_better=False))
    return rows


def observability(sizes: Sizes) -> list[Row]:
    """What metrics and tracing cost: the drain with /metrics served and scraped; the drain of
    notifications recorded in a span, through a bridge running OpenTelemetry's Celery
    instrumentation; single-row writes made in a span."""
    metrics = ("--metrics-port", str(METRICS_PORT))
    tracer = trace.get_tracer(__name__)

    def traced_drain() -> float:
        with tracer.start_as_current_span("writer"):
            return drain_rate(sizes.drain, BENCH_TRACING="1")

    def single(in_span: bool, atomic: bool) -> float:
        reset()
        started = time.monotonic()
        with tracer.start_as_current_span("request") if in_span else contextlib.nullcontext():
            for n in range(sizes.single_rows):
                with transaction.atomic() if atomic else contextlib.nullcontext():
                    Source.objects.create(n=n)
        return sizes.single_rows / (time.monotonic() - started)

    (with_metrics, without_metrics, traced, untraced, span_atomic, atomic, span_autocommit,
     autocommit) = median_of_runs(
        functools.partial(drain_rate, sizes.drain, *metrics, scrape=True),
        functools.partial(drain_rate, sizes.drain),
        traced_drain, functools.partial(drain_rate, sizes.drain),
        functools.partial(single, True, True), functools.partial(single, False, True),
        functools.partial(single, True, False), functools.partial(single, False, False))
    reset()
    drained = f"drain: {sizes.drain:,} notifications published, no worker"
    writes = f"write cost: {sizes.single_rows:,} single-row ORM inserts"
    return [
        Row(f"{drained}, /metrics served and scraped every second vs off", with_metrics,
            without_metrics, "/s", "≈ 1.0×"),
        Row(f"{drained}, recorded in a span, bridge traced by OpenTelemetry vs neither",
            traced, untraced, "/s", "≈ 1.0×"),
        Row(f"{writes} in transaction.atomic(), in a span vs outside one", span_atomic, atomic,
            "/s", "measured"),
        Row(f"{writes} in autocommit, in a span vs outside one", span_autocommit, autocommit,
            "/s", "measured"),
    ]


MEASURES = {
    "drain": drain,
    "end-to-end": lambda sizes: [end_to_end(sizes)],
    "batches": lambda sizes: [batches(sizes)],
    "latency": lambda sizes: list(paced(sizes, round(worker_ceiling(sizes.end_to_end) / 2))),
    "write-cost": write_cost,
    "memory": lambda sizes: [memory(sizes), *large_rows(sizes)],
    "outcomes": outcomes,
    "keyed": keyed,
    "observability": observability,
}


# -- report ------------------------------------------------------------------------------


def versions() -> str:
    import celery
    import kombu

    server = scalar("SHOW server_version")
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return (f"Python {platform.python_version()}, Django {django.__version__}, "
            f"Celery {celery.__version__}, kombu {kombu.__version__}, PostgreSQL {server}, "
            f"broker {current_app.connection_for_write().transport_cls}; {os.cpu_count()} cores "
            f"({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB")


def table(rows: list[Row]) -> str:
    lines = ["| measure | pgcelery | baseline | ratio | target |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.what} | {row.pgcelery:,.1f}{row.unit} | {row.baseline:,.1f}"
                     f"{row.unit} | {row.ratio:.2f}× | {row.target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a run of minutes")
    parser.add_argument("--only", choices=MEASURES, nargs="+", default=list(MEASURES),
                        help="some measures only (the results file is not written)")
    arguments = parser.parse_args()
    quick, only = arguments.quick, arguments.only
    sizes = QUICK if quick else FULL
    create_database()
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=EXAMPLE,
                   check=True, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{EXAMPLE}"})
    try:
        rows = [row for name in only for row in MEASURES[name](sizes)]
    finally:
        for process in list(Process.running):
            process.stop()
    report = (f"# pgcelery benchmark ({'quick' if quick else 'full'} run)\n\n"
              f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC — "
              f"{versions()}\n\nRatios: higher is better (for latency and memory, "
              f"baseline ÷ pgcelery).\n\n{table(rows)}\n")
    print(report)
    if only == list(MEASURES):
        (ROOT / "bench" / "results" / ("quick.md" if quick else "latest.md")).write_text(report)


if __name__ == "__main__":
    main()
