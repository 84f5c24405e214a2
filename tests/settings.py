"""The example project's settings plus the test app."""

from proj.settings import *  # noqa: F403
from proj.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
# Long enough that tests pass only if LISTEN wake-ups work.
PGCELERY_SWEEP_INTERVAL = 300.0
