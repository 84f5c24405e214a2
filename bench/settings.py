"""The example project's settings plus the benchmark's app.

The naive baseline reads notifications with psycopg2's API, so both sides run on psycopg2:
psycopg 3, which Django would prefer when it is installed too, is hidden.
"""

import os
import sys

from proj.settings import *  # noqa: F403
from proj.settings import DATABASES, INSTALLED_APPS

sys.modules["psycopg"] = None  # type: ignore[assignment]  # importing it now fails

INSTALLED_APPS = [*INSTALLED_APPS, "bench.benchapp"]
# A database of its own, beside the one DATABASE_URL names.
DATABASES = {"default": {**DATABASES["default"], "NAME": "pgcelery_bench"}}

# The memory measure compares the byte budget with none.
if "PGCELERY_BATCH_BYTES" in os.environ:
    PGCELERY_BATCH_BYTES = int(os.environ["PGCELERY_BATCH_BYTES"])
