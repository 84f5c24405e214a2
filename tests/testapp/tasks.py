"""A listener kept in tasks.py, as Celery's users keep their tasks."""

import pgcelery
from tests.testapp.channels import Greeting
from tests.testapp.listeners import record


@pgcelery.listener(Greeting)
def greeted(name: str):
    record("greeted", name=name)
