"""The benchmark's listener, and the task the naive bridge sends: each one small write."""

import time

from celery import shared_task

import pgcelery
from bench.benchapp.channels import (
    BatchSourceChannel,
    Blob,
    FailingTick,
    KeptTick,
    KeyedTick,
    SourceChannel,
    Tick,
)
from bench.benchapp.models import Hit

QUEUE = "bench"


@pgcelery.post_insert_listener(SourceChannel, queue=QUEUE)
def source_inserted(old, new):
    Hit.objects.create(n=new.n, started=time.time(), via="pgcelery")


@pgcelery.post_insert_listener(BatchSourceChannel, queue=QUEUE, batch=500)
def batch_inserted(notifications):
    started = time.time()
    Hit.objects.bulk_create(Hit(n=item.new.n, started=started, via="batch")
                            for item in notifications)


@pgcelery.listener(Tick, queue=QUEUE)
def ticked(n: int):
    Hit.objects.create(n=n, started=time.time(), via="plain")


@pgcelery.listener(KeptTick, queue=QUEUE, redeliver_after=600)
def kept_ticked(n: int):
    Hit.objects.create(n=n, started=time.time(), via="kept")


@pgcelery.listener(KeyedTick, queue=QUEUE, key="key", ordered=True)
def keyed_ticked(key: int, n: int):
    Hit.objects.create(n=n, started=time.time(), via="keyed")


@pgcelery.listener(FailingTick, queue=QUEUE)
def failing_ticked(n: int):
    raise RuntimeError(f"tick {n} fails")


@pgcelery.listener(Blob, queue=QUEUE)
def blob_received(n: int, data: str):
    Hit.objects.create(n=n, started=time.time(), via="blob")


@shared_task(name="bench.naive_hit")
def naive_hit(n: int):
    Hit.objects.create(n=n, started=time.time(), via="naive")
