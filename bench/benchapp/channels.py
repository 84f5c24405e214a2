from dataclasses import dataclass

from bench.benchapp.models import BatchSource, Source
from pgcelery import Channel, TriggerChannel


@dataclass
class SourceChannel(TriggerChannel):
    model = Source


@dataclass
class BatchSourceChannel(TriggerChannel):
    model = BatchSource


@dataclass
class Tick(Channel):
    """notify()'d; its listener records a hit, as the trigger listener does."""

    n: int


@dataclass
class KeptTick(Channel):
    """The same, to a listener with ``redeliver_after``."""

    n: int


@dataclass
class FailingTick(Channel):
    """The same, to a listener that always fails: each run ends as a failed delivery."""

    n: int


@dataclass
class KeyedTick(Channel):
    """The same, of one of a number of keys, to a listener with ``ordered=True``."""

    key: int
    n: int


@dataclass
class Blob(Channel):
    """A large payload, for the bridge's memory."""

    n: int
    data: str
