from dataclasses import dataclass

from bench.benchapp.models import Source
from pgcelery import TriggerChannel


@dataclass
class SourceChannel(TriggerChannel):
    model = Source
