import pgtrigger
from django.db import models


class Source(models.Model):
    """Rows whose inserts pgcelery turns into tasks (its trigger comes from the listener)."""

    n = models.IntegerField()


class Plain(models.Model):
    """The same table with no trigger: the write-cost baseline."""

    n = models.IntegerField()


class NaiveSource(models.Model):
    """The same table with the naive bridge's trigger: a bare pg_notify per row."""

    n = models.IntegerField()

    class Meta:
        triggers = [
            pgtrigger.Trigger(
                name="naive_notify",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                func="PERFORM pg_notify('bench_naive', NEW.n::text); RETURN NEW;",
            )
        ]


class BareSource(models.Model):
    """The same table with the cheapest useful trigger: a bare
    ``pg_notify(channel, to_jsonb(NEW)::text)`` per row, installed by plain SQL in the
    migration (no pgtrigger wrapper), the write-cost floor of any notifying trigger."""

    n = models.IntegerField()


class BatchSource(models.Model):
    """Rows whose inserts reach a listener with ``batch=500``."""

    n = models.IntegerField()


class Hit(models.Model):
    """One listener run: which notification, when it started, through which bridge."""

    n = models.IntegerField()
    started = models.FloatField()
    via = models.CharField(max_length=10)
