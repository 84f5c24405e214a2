"""pgcelery's pytest plugin, installed with pgcelery: the ``pgcelery_deliver`` fixture."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def pgcelery_deliver() -> Any:
    """``pgcelery.testing.deliver`` itself: ``with pgcelery_deliver(): ...`` delivers
    the notifications recorded in the block when it ends. Use it with a database fixture
    (pytest-django's ``db`` or ``transactional_db``)."""
    from pgcelery import testing  # Django is set up by the time a test runs

    return testing.deliver
