"""What a listener's run leaves behind, seen through a real worker with a result backend."""

import pytest
from celery import Celery

import pgcelery
from tests import support
from tests.testapp.channels import Counted
from tests.testapp.listeners import count_once
from tests.testapp.models import Event

pytestmark = pytest.mark.usefixtures("transactional_db")

RESULTS = support.redis_url()


def test_a_repeated_atomic_task_id_leaves_the_first_runs_result_alone(spawn):
    """The bridge's run stores its result; a plain ``apply_async`` under the same task id,
    which the worker skips, must not replace it (with ``None``, before)."""
    if not support.port_open(6379):
        pytest.skip("the result backend is the local Redis")
    support.purge_queues()
    worker = spawn.worker(env=support.subprocess_env(CELERY_RESULT_BACKEND=RESULTS),
                          name="results-worker")
    bridge = spawn.bridge()
    pgcelery.notify(Counted, n=5)
    support.wait_until(lambda: Event.objects.filter(listener="count_once").exists(),
                       what="the bridge's run")
    [task_id] = Event.objects.filter(listener="count_once").values_list("task_id", flat=True)
    results = Celery("results", set_as_current=False, backend=RESULTS)
    assert results.AsyncResult(task_id).get(timeout=30) == 5

    count_once.apply_async(kwargs={"n": 6, "fail": False, "hold": 0}, task_id=task_id)
    support.wait_until(lambda: f"count_once[{task_id}] ignored" in worker.log(),
                       what="the repeat to be skipped")
    assert Event.objects.filter(listener="count_once").count() == 1
    assert results.AsyncResult(task_id).get(timeout=30) == 5
    results.AsyncResult(task_id).forget()
    assert bridge.stop() == 0
