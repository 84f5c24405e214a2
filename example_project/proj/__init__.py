# The Celery app is loaded with Django, so the bridge publishes with it (Celery's Django setup).
from proj.celery import app as celery_app

__all__ = ["celery_app"]
