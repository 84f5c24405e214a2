"""The benchmark's listener, and the task the naive bridge sends: each one small write."""

import time

from celery import shared_task

import pgcelery
from bench.benchapp.channels import SourceChannel
from bench.benchapp.models import Hit

QUEUE = "bench"


@pgcelery.post_insert_listener(SourceChannel, queue=QUEUE)
def source_inserted(old, new):
    Hit.objects.create(n=new.n, started=time.time(), via="pgcelery")


@shared_task(name="bench.naive_hit")
def naive_hit(n: int):
    Hit.objects.create(n=n, started=time.time(), via="naive")
