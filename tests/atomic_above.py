"""A listener written as django-pgpubsub's test project writes one: ``@atomic`` above the
listener decorator (imported by the test of the check that warns about it)."""

from dataclasses import dataclass

from django.db.transaction import atomic

import pgcelery


@dataclass
class Unheard(pgcelery.Channel):
    n: int


@atomic
@pgcelery.listener(Unheard)
def wrapped_listener(n: int) -> None:
    pass


@pgcelery.listener(Unheard, atomic=True)
def atomic_listener(n: int) -> None:
    pass
