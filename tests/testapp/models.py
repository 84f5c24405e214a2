"""Models of the shapes trigger payloads must survive."""

import uuid

from django.contrib.postgres.fields import ArrayField, DateRangeField, DateTimeRangeField
from django.db import models


class Event(models.Model):
    """What a listener saw, written by the listener itself on the worker."""

    listener = models.CharField(max_length=100)
    data = models.JSONField()
    task_id = models.CharField(max_length=255, null=True)


class Writer(models.Model):
    name = models.CharField(max_length=100)
    email = models.CharField(max_length=100, blank=True)


class Sku(models.Model):
    """Custom primary key and a numeric(40, 20) column."""

    code = models.CharField(max_length=20, primary_key=True)
    price = models.DecimalField(max_digits=40, decimal_places=20)


class Legacy(models.Model):
    """Columns whose names differ from their fields."""

    legacy_id = models.AutoField(primary_key=True, db_column="LegacyID")
    title = models.CharField(max_length=100, db_column="Title Text")
    writer = models.ForeignKey(Writer, null=True, on_delete=models.SET_NULL, db_column="writer")


class Place(models.Model):
    name = models.CharField(max_length=100)


class Restaurant(Place):
    """Multi-table inheritance: the row is split over two tables."""

    serves_pizza = models.BooleanField(default=False)


class Sample(models.Model):
    """One column of each common type."""

    when = models.DateTimeField()
    day = models.DateField()
    ratio = models.FloatField()
    token = models.UUIDField(default=uuid.uuid4)
    flag = models.BooleanField()
    doc = models.JSONField()
    blob = models.BinaryField()
    span = models.DurationField()
    note = models.TextField(null=True)


class Account(models.Model):
    """Secrets that must never leave Postgres."""

    name = models.CharField(max_length=100)
    password = models.CharField(max_length=128)
    api_token = models.CharField(max_length=64)


class Reading(models.Model):
    """Rows written in bulk, for batch listeners."""

    n = models.IntegerField()
    value = models.DecimalField(max_digits=12, decimal_places=3)


class Span(models.Model):
    """Columns whose to_jsonb is text that the fields' to_python does not read as such:
    ranges (``'[2020-01-01,2020-02-01)'``, ``'empty'``) and numeric ``'NaN'``."""

    days = DateRangeField(null=True)
    times = DateTimeRangeField(null=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2, null=True)
    counts = ArrayField(models.IntegerField(), null=True)


class Ticket(models.Model):
    """Updated in turns, for a trigger listener keyed on a column of its own name."""

    queue = models.IntegerField(db_column="queue_number")
    state = models.CharField(max_length=20)
