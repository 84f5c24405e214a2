import datetime
import decimal
import uuid
from dataclasses import dataclass, field
from typing import Optional, Tuple  # noqa: UP035 - Tuple[X] as pgpubsub users write it

from pgcelery import Channel, TriggerChannel
from tests.testapp.models import (
    Account,
    Legacy,
    Reading,
    Restaurant,
    Sample,
    Sku,
    Span,
    Ticket,
    Writer,
)


@dataclass
class WriterChannel(TriggerChannel):
    model = Writer
    lock_notifications = True


@dataclass
class SkuChannel(TriggerChannel):
    model = Sku


@dataclass
class LegacyChannel(TriggerChannel):
    model = Legacy


@dataclass
class RestaurantChannel(TriggerChannel):
    model = Restaurant


@dataclass
class SampleChannel(TriggerChannel):
    model = Sample


@dataclass
class Message(Channel):
    text: str


@dataclass
class Everything(Channel):
    an_int: int
    a_float: float
    a_str: str
    a_bool: bool
    a_none: None
    a_date: datetime.date
    a_datetime: datetime.datetime
    a_naive_datetime: datetime.datetime
    a_decimal: decimal.Decimal
    a_uuid: uuid.UUID
    maybe: Optional[int]  # noqa: UP045 - the typing spelling must work too
    maybe_not: datetime.date | None
    dates: list[datetime.date]
    pair: tuple[int, str]
    numbers: tuple[float, ...]
    tags: set[str]
    prices: dict[str, decimal.Decimal]
    by_id: dict[int, uuid.UUID]
    nested: list[dict[str, datetime.datetime | None]]
    with_default: int = 7
    with_factory: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Routed(Channel):
    n: int


@dataclass
class WithContext(Channel):
    n: int


@dataclass
class Counted(Channel):
    n: int
    fail: bool = False
    hold: float = 0.0
    crash: bool = False  # kill the worker process after the commit, before the ack


@dataclass
class Slow(Channel):
    n: int
    hold: float


@dataclass
class Flaky(Channel):
    failures: int


@dataclass
class Ping(Channel):
    n: int


@dataclass
class Outcome(Channel):
    """Two listeners: one succeeds, one fails until an ``allow`` event exists."""

    n: int


@dataclass
class Limited(Channel):
    hold: float


@dataclass
class HardLimited(Channel):
    hold: float


@dataclass
class Kept(Channel):
    """Two listeners: one with ``redeliver_after``, one without."""

    n: int


@dataclass
class Lingering(Channel):
    """An ``atomic=True`` listener with ``redeliver_after`` shorter than its run."""

    n: int
    hold: float


@dataclass
class Rejected(Channel):
    n: int


@dataclass
class AccountChannel(TriggerChannel):
    model = Account
    exclude_fields = ["password", "api_token"]


@dataclass
class AccountNameChannel(TriggerChannel):
    model = Account
    include_fields = ["name"]


@dataclass
class ReadingChannel(TriggerChannel):
    model = Reading


@dataclass
class Tally(Channel):
    n: int
    day: datetime.date


@dataclass
class AtomicTally(Channel):
    n: int


@dataclass
class FailingTally(Channel):
    n: int


@dataclass
class KeptTally(Channel):
    n: int


@dataclass
class Reads(Channel):
    """Declared as django-pgpubsub's users declare channels: a field defaulting to None
    without Optional, and Tuple[X] for any number of X."""

    model_id: int
    model_type: str
    date: datetime.date = None  # type: ignore[assignment]
    tags: Tuple[str] = ()  # noqa: UP006 - the typing form pgpubsub's users write


@dataclass
class Broadcasted(Channel):
    """Routed to a broadcast queue: every worker consuming it runs each notification."""

    n: int


@dataclass
class Greeting(Channel):
    """Its listener lives in the app's tasks.py, where Celery's users keep their tasks."""

    name: str


@dataclass
class SpanChannel(TriggerChannel):
    model = Span


@dataclass
class Loose(Channel):
    """A field of any JSON, nested as deep as the writer likes."""

    data: dict


@dataclass
class Keyed(Channel):
    """A notification of one key: its listener holds for ``hold`` seconds, and raises if
    ``fail``."""

    key: int
    n: int
    hold: float = 0.0
    fail: bool = False


@dataclass
class KeyedInOrder(Keyed):
    pass


@dataclass
class KeyedBlocking(Keyed):
    pass


@dataclass
class KeyedDebounced(Keyed):
    pass


@dataclass
class KeyedDebouncedMax(Keyed):
    pass


@dataclass
class KeyedLimited(Keyed):
    pass


@dataclass
class KeyedBatched(Keyed):
    pass


@dataclass
class TicketChannel(TriggerChannel):
    model = Ticket
