"""Typed payloads: channel fields to JSON and back, trigger rows to model instances.

Notifications are stored as JSON in Postgres. A ``Channel`` payload is encoded by the
declared type of each field, so it is decoded back to exactly that type on the worker;
a trigger row is the ``to_jsonb`` of the row, rebuilt into an unsaved model instance.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.base import DEFERRED
from django.utils import timezone

from pgcelery import channels

_NoneType = type(None)
_UNION_TYPES = (typing.Union, types.UnionType)


def _check_str(value: str) -> str:
    if "\x00" in value:
        raise ValueError("strings cannot hold NUL (\\x00) characters; PostgreSQL rejects them")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"string is not valid Unicode ({exc.reason})") from None
    return value


def _check_finite(value: Any) -> Any:
    if not (math.isfinite(value) if isinstance(value, float) else value.is_finite()):
        raise ValueError(f"{value!r} is not finite; JSON cannot hold it")
    return value


class _Scalar(typing.NamedTuple):
    accepts: Callable[[Any], bool]  # the Python values notify() takes
    encode: Callable[[Any], Any]
    stored: Callable[[Any], bool]  # the JSON values a stored payload may hold
    decode: Callable[[Any], Any]


def _is(*classes: type, not_: tuple[type, ...] = ()) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, classes) and not isinstance(value, not_)


_text = _is(str)
_SCALARS: dict[Any, _Scalar] = {
    bool: _Scalar(_is(bool), bool, _is(bool), bool),
    int: _Scalar(_is(int, not_=(bool,)), int, _is(int, not_=(bool,)), int),
    # An int is accepted where a float is declared; the listener receives a float.
    float: _Scalar(_is(int, float, not_=(bool,)), lambda v: _check_finite(float(v)),
                   _is(int, float, decimal.Decimal, not_=(bool,)), float),
    str: _Scalar(_is(str), _check_str, _text, str),
    decimal.Decimal: _Scalar(_is(decimal.Decimal), lambda v: str(_check_finite(v)), _text,
                             decimal.Decimal),
    datetime.datetime: _Scalar(_is(datetime.datetime), datetime.datetime.isoformat, _text,
                               datetime.datetime.fromisoformat),
    datetime.date: _Scalar(_is(datetime.date, not_=(datetime.datetime,)),
                           datetime.date.isoformat, _text, datetime.date.fromisoformat),
    datetime.time: _Scalar(_is(datetime.time), datetime.time.isoformat, _text,
                           datetime.time.fromisoformat),
    uuid.UUID: _Scalar(_is(uuid.UUID), str, _text, uuid.UUID),
    _NoneType: _Scalar(lambda v: v is None, lambda v: None, lambda v: v is None, lambda v: None),
}
_JSON_NATIVE = (str, int, float, bool, _NoneType)
_SEQUENCES = (list, tuple, set, frozenset)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _scalar(tp: Any) -> _Scalar:
    scalar = _SCALARS.get(tp)
    if scalar is None:
        raise TypeError(f"unsupported type {_type_name(tp)}")
    return scalar


def _optional_member(tp: Any) -> Any:
    members = [arg for arg in typing.get_args(tp) if arg is not _NoneType]
    if len(members) != 1:
        raise TypeError(
            f"unsupported type {_type_name(tp)}: only Optional[X] unions can be encoded"
        )
    return members[0]


def _item_types(container: type, args: tuple, length: int) -> list[Any]:
    """The declared type of each item. ``Tuple[X]`` holds any number of X, as
    django-pgpubsub reads it; ``Tuple[X, Y]`` exactly one X then one Y."""
    if not args:
        return [Any] * length
    if container is tuple and len(args) > 1 and args[1] is not Ellipsis:
        if len(args) != length:
            raise TypeError(f"expected a tuple of {len(args)} items, got {length}")
        return list(args)
    return [args[0]] * length


def _wrong_type(value: Any, tp: Any) -> TypeError:
    return TypeError(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r:.80}")


def encode(value: Any, tp: Any) -> Any:
    """``value`` as JSON-ready data, checked against the declared type ``tp``.

    Raises:
        TypeError: if ``value`` is not of type ``tp`` or ``tp`` cannot be encoded.
        ValueError: if ``value`` has the right type but JSON or PostgreSQL cannot hold it.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _encode_any(value)
    if origin in _UNION_TYPES:
        return None if value is None and _NoneType in args else encode(value, _optional_member(tp))
    container = origin or tp
    if container in _SEQUENCES:
        if not isinstance(value, container):
            raise _wrong_type(value, tp)
        items = sorted(value, key=repr) if container in (set, frozenset) else value
        item_types = _item_types(container, args, len(value))
        return [encode(item, item_tp) for item, item_tp in zip(items, item_types, strict=True)]
    if container is dict:
        if not isinstance(value, dict):
            raise _wrong_type(value, tp)
        key_tp, value_tp = args or (Any, Any)
        return {_encode_key(k, key_tp): encode(v, value_tp) for k, v in value.items()}
    scalar = _scalar(tp)
    if not scalar.accepts(value):
        raise _wrong_type(value, tp)
    return scalar.encode(value)


def _encode_any(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_encode_any(item) for item in value]
    if isinstance(value, dict):
        return {_encode_key(k, str): _encode_any(v) for k, v in value.items()}
    if not isinstance(value, _JSON_NATIVE):
        raise TypeError(f"{type(value).__name__} {value!r:.80} needs a declared type to be encoded")
    return _check_str(value) if isinstance(value, str) else value


def _encode_key(key: Any, tp: Any) -> str:
    encoded = encode(key, tp)
    if not isinstance(encoded, (str, int)) or isinstance(encoded, bool):
        raise TypeError(f"unsupported dict key type {_type_name(tp)}")
    return str(encoded)


def decode(value: Any, tp: Any) -> Any:
    """The inverse of ``encode``: stored JSON data back to the declared type ``tp``.

    Raises:
        TypeError, ValueError: if the stored value cannot be of type ``tp``.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in _UNION_TYPES:
        return None if value is None and _NoneType in args else decode(value, _optional_member(tp))
    container = origin or tp
    if container in _SEQUENCES:
        if not isinstance(value, list):
            raise _wrong_type(value, tp)
        item_types = _item_types(container, args, len(value))
        items = [decode(item, item_tp) for item, item_tp in zip(value, item_types, strict=True)]
        return items if container is list else container(items)
    if container is dict:
        if not isinstance(value, dict):
            raise _wrong_type(value, tp)
        key_tp, value_tp = args or (Any, Any)
        return {_decode_key(k, key_tp): decode(v, value_tp) for k, v in value.items()}
    scalar = _scalar(tp)
    if not scalar.stored(value):
        raise _wrong_type(value, tp)
    return scalar.decode(value)


def _decode_key(key: str, tp: Any) -> Any:
    return int(key) if tp is int else decode(key, tp)


# -- Channel payloads ---------------------------------------------------------------


def encode_fields(channel: type[channels.BaseChannel],
                  values: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON payload of a notification on ``channel``, every field checked.

    Missing fields with a default get it; the error names the channel and the field.
    """
    name = channels.channel_name(channel)
    declared = {field.name: field for field in channels.fields(channel)}
    unexpected = sorted(set(values) - set(declared))
    if unexpected:
        raise TypeError(
            f"{name} has no field {', '.join(map(repr, unexpected))}; "
            f"its fields are: {', '.join(declared) or '(none)'}."
        )
    missing = [f for f, field in declared.items() if field.required and f not in values]
    if missing:
        raise TypeError(f"{name} is missing required field {', '.join(map(repr, missing))}.")
    payload = {}
    for field_name, field in declared.items():
        value = values[field_name] if field_name in values else field.default_value()
        try:
            payload[field_name] = encode(value, field.type)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}.{field_name}: {exc}") from None
        except RecursionError:
            raise ValueError(f"{name}.{field_name}: the value is nested deeper than Python "
                             "encodes (a cycle, or thousands of levels).") from None
    return payload


def decode_fields(channel: type[channels.BaseChannel], payload: Any) -> dict[str, Any]:
    """Keyword arguments of the declared types from a stored payload.

    Fields declared with a default since the notification was written get it; fields no
    longer declared are dropped.

    Raises:
        TypeError, ValueError: naming the channel and field that cannot be decoded.
    """
    name = channels.channel_name(channel)
    if not isinstance(payload, dict):
        raise TypeError(f"{name}: payload is a {type(payload).__name__}, not an object")
    kwargs = {}
    for field in channels.fields(channel):
        if field.name in payload:
            try:
                kwargs[field.name] = decode(payload[field.name], field.type)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}.{field.name}: {exc}") from None
        elif field.required:
            raise TypeError(f"{name}: payload has no {field.name!r}")
        else:
            kwargs[field.name] = field.default_value()
    return kwargs


def check_rows(model: type[models.Model], payload: Any) -> None:
    """Checks a trigger payload as the worker will open it: ``old`` and ``new``, each null or
    a row whose every column Django can read (not ``'infinity'``, a BC date, year 10000).

    Raises:
        TypeError: if the payload is not shaped so.
        ValueError: naming the row, the column and the value Django cannot read.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"trigger payload is a {type(payload).__name__}, not an object")
    for key in ("old", "new"):
        if key not in payload or not isinstance(payload[key], (dict, _NoneType)):
            raise TypeError(f"trigger payload has no {key!r} row")
        if payload[key] is not None:
            _read_columns(model, payload[key], key)


# -- Trigger rows ----------------------------------------------------------------------


#: One decoder for every payload: ``json.loads`` with options builds a new one per call.
_DECODER = json.JSONDecoder(parse_float=decimal.Decimal)


def load(text: str) -> Any:
    """Parses stored JSON, keeping every number exact (``numeric`` columns stay Decimal).

    Raises:
        ValueError: also for JSON nested deeper than Python's parser goes.
    """
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError(
            "the JSON is nested deeper than Python's JSON parser reads (about "
            f"{sys.getrecursionlimit()} levels)") from None


def dump(value: Any) -> str:
    """Serialises a payload for storage."""
    return json.dumps(value, separators=(",", ":"))


#: Marks a model instance that ``.delay()`` or ``.apply_async()`` sent a listener's task:
#: ``{ROW_MARK: "app_label.Model", "row": {column: value}}``, the row as the trigger would
#: have recorded it, so a JSON message can carry it.
ROW_MARK = "pgcelery.row"


def marked_row(value: Any) -> Any:
    """``value``, or, for a model instance, its marked row (its deferred fields left out)."""
    if not isinstance(value, models.Model):
        return value
    deferred = value.get_deferred_fields()
    row = {field.column: _column_text(field, value) for field in value._meta.concrete_fields
           if field.column and field.attname not in deferred}
    return {ROW_MARK: value._meta.label, "row": row}


def unmarked_row(value: Any) -> Any:
    """``value``, or, for a marked row, the unsaved model instance it was made from."""
    if not (isinstance(value, dict) and ROW_MARK in value):
        return value
    return build_instance(apps.get_model(value[ROW_MARK]), value["row"])


def _column_text(field: models.Field, instance: models.Model) -> Any:
    """The field's value as ``to_jsonb`` writes its column, for ``_column_value``."""
    value = field.value_from_object(instance)
    if value is None or isinstance(field, models.JSONField):
        return value
    if isinstance(field, models.BinaryField):
        return "\\x" + bytes(value).hex()
    return field.value_to_string(instance)


def build_instance(model: type[models.Model], row: Mapping[str, Any] | None,
                   hidden: Iterable[models.Field] = ()) -> models.Model | None:
    """An unsaved ``model`` instance from the ``to_jsonb`` of its row (``None`` stays ``None``).

    Columns are matched by their database name, so ``db_column`` and custom primary keys
    work; columns added since the row was recorded keep their field default, columns
    dropped since are ignored; ``hidden`` fields, left out by the trigger, are deferred.
    """
    if row is None:
        return None
    values = _read_columns(model, row)
    values.update((field.attname, DEFERRED) for field in hidden)
    return model(**values)


def _read_columns(model: type[models.Model], row: Mapping[str, Any],
                  side: str = "row") -> dict[str, Any]:
    """The row's values by field attribute name, read as Django reads its columns.

    Raises:
        ValueError: naming the column and the value Django cannot read.
    """
    values = {}
    for field in model._meta.concrete_fields:
        column = field.column
        if column is None or column not in row:
            continue
        try:
            values[field.attname] = _column_value(field, row[column])
        except (ValidationError, ValueError, TypeError, ArithmeticError) as exc:
            reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else exc
            raise ValueError(
                f"{side} column {column!r} ({model.__name__}.{field.name}) holds "
                f"{row[column]!r:.200}, which Django cannot read as a "
                f"{field.get_internal_type()}: {reason}"
            ) from exc
    return values


#: What ``to_jsonb`` writes for a numeric that is not a number: Django reads them as
#: Decimals from the database, though ``DecimalField.to_python`` refuses them.
_NOT_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})
#: A range as PostgreSQL writes it: bounds, each empty (unbounded), quoted or bare.
_RANGE = re.compile(r'([\[(])("(?:[^"\\]|\\.|"")*"|[^,]*),("(?:[^"\\]|\\.|"")*"|[^\])]*)([\])])')


def _column_value(field: models.Field, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(field, models.JSONField):
        return _floats(value)
    if isinstance(field, models.DecimalField) and value in _NOT_FINITE:
        return decimal.Decimal(value)
    if hasattr(field, "range_type") and isinstance(value, str):
        return _range(field, value)
    if isinstance(field, models.BinaryField):
        return bytes.fromhex(value[2:])  # bytea arrives as its '\x…' hex text
    if isinstance(field, models.FloatField):
        return float(value)
    value = field.to_python(value)
    if isinstance(field, models.DateTimeField) and timezone.is_aware(value):
        # As Django reads it from the database, whatever the writer's session time zone.
        return value.astimezone(datetime.timezone.utc)
    return value


def _range(field: Any, text: str) -> Any:
    """A range field's value from its text (``'[2020-01-01,2020-02-01)'``, ``'empty'``), as
    ``to_jsonb`` writes a range column."""
    if text == "empty":
        return field.range_type(empty=True)
    found = _RANGE.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r:.200} is not a range")
    opening, lower, upper, closing = found.groups()
    return field.range_type(_range_bound(field, lower), _range_bound(field, upper),
                            opening + closing)


def _range_bound(field: Any, text: str) -> Any:
    if text == "":
        return None  # unbounded
    if text.startswith('"'):
        text = re.sub(r'\\(.)|""', lambda escaped: escaped.group(1) or '"', text[1:-1])
    return _column_value(field.base_field, text)


def _floats(value: Any) -> Any:
    """JSON column contents as json.loads would give them (floats, not Decimals), changed in
    place, at any depth."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    containers = [value] if isinstance(value, (list, dict)) else []
    while containers:
        container = containers.pop()
        for key, item in (container.items() if isinstance(container, dict)
                          else enumerate(container)):
            if isinstance(item, decimal.Decimal):
                container[key] = float(item)
            elif isinstance(item, (list, dict)):
                containers.append(item)
    return value
