import os

from celery import Celery, signals
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _close_old_connections(task, **kwargs):
    """Around each task, what Django does around each request: a connection lives
    CONN_MAX_AGE seconds and is health-checked, instead of being reopened for every task
    (Celery's own closing is spaced out by CELERY_DB_REUSE_MAX in the settings)."""
    if not task.request.is_eager:  # an eager task runs inside its caller's transaction
        close_old_connections()
