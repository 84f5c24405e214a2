"""The example project's settings plus the test app."""

from proj.settings import *  # noqa: F403
from proj.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
PGCELERY_SWEEP_INTERVAL = 1.0
