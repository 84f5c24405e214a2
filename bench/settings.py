"""The example project's settings plus the benchmark's app."""

from proj.settings import *  # noqa: F403
from proj.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
# A database of its own, beside the one DATABASE_URL names.
DATABASES = {"default": {**DATABASES["default"], "NAME": "pgcelery_bench"}}
