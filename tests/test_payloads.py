import datetime
import decimal
import json
import uuid
from typing import Any, Optional

import pytest

from pgcelery import payloads
from tests.testapp.channels import Everything, Message
from tests.testapp.models import Legacy, Restaurant, Sku

UTC = datetime.timezone.utc


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        (0, int), (-(2**70), int), (1.5, float), ("", str), ("☃\n\t\"'\\", str), (False, bool),
        (None, type(None)), (datetime.date(1, 1, 1), datetime.date),
        (datetime.datetime(2026, 1, 1, 1, 2, 3, 4, tzinfo=UTC), datetime.datetime),
        (datetime.datetime(2026, 1, 1, 1, 2, 3), datetime.datetime),
        (datetime.time(1, 2, 3, 4), datetime.time),
        (decimal.Decimal("-0.000000000000000000000000001"), decimal.Decimal),
        (uuid.uuid4(), uuid.UUID), (None, Optional[int]), (3, Optional[int]),  # noqa: UP045
        (None, int | None), ([1, 2], list[int]), ((1, "a"), tuple[int, str]),
        ((1.0, 2.0), tuple[float, ...]), ({"x", "y"}, set[str]), (frozenset({1}), frozenset[int]),
        ({"k": decimal.Decimal("1.0")}, dict[str, decimal.Decimal]),
        ({datetime.date(2026, 1, 1): 1}, dict[datetime.date, int]), ({1: "a"}, dict[int, str]),
        ({"a": [1, "b", None, {"c": 1.5}]}, dict), ([1, "x"], list), ("any", Any),
    ],
)
def test_values_round_trip_through_json_with_their_type(value, tp):
    stored = json.loads(payloads.dump(payloads.encode(value, tp)))
    decoded = payloads.decode(stored, tp)
    assert decoded == value
    assert type(decoded) is type(value)


def test_an_int_is_accepted_where_a_float_is_declared_and_decoded_as_float():
    assert payloads.decode(payloads.encode(2, float), float) == 2.0
    assert type(payloads.decode(payloads.encode(2, float), float)) is float


@pytest.mark.parametrize(
    ("value", "tp", "error", "message"),
    [
        ("1", int, TypeError, "expected int, got str"),
        (True, int, TypeError, "expected int, got bool"),
        (1.5, int, TypeError, "expected int, got float"),
        (datetime.datetime(2026, 1, 1), datetime.date, TypeError, "expected date, got datetime"),
        ("2026-01-01", datetime.date, TypeError, "expected date, got str"),
        (1.5, decimal.Decimal, TypeError, "expected Decimal, got float"),
        ([1, "2"], list[int], TypeError, "expected int, got str"),
        ((1, 2), list[int], TypeError, "expected list"),
        ((1, 2, 3), tuple[int, int], TypeError, "expected a tuple of 2 items"),
        (object(), Any, TypeError, "needs a declared type"),
        (1, int | str, TypeError, "only Optional"),
        (1, bytes, TypeError, "unsupported type bytes"),
        (float("nan"), float, ValueError, "not finite"),
        (decimal.Decimal("Infinity"), decimal.Decimal, ValueError, "not finite"),
        ("a\x00b", str, ValueError, "NUL"),
        ("\ud800", str, ValueError, "not valid Unicode"),
        ({"\x00": 1}, dict[str, int], ValueError, "NUL"),
    ],
)
def test_wrong_values_are_refused(value, tp, error, message):
    with pytest.raises(error, match=message):
        payloads.encode(value, tp)


def test_encode_fields_fills_defaults():
    assert payloads.encode_fields(Message, {"text": "hi"}) == {"text": "hi"}
    fields = {f: None for f in ("a_none", "maybe", "maybe_not")}
    payload = payloads.encode_fields(
        Everything,
        {**fields, "an_int": 1, "a_float": 1.0, "a_str": "", "a_bool": True,
         "a_date": datetime.date(2026, 1, 1), "a_datetime": datetime.datetime(2026, 1, 1),
         "a_naive_datetime": datetime.datetime(2026, 1, 1), "a_decimal": decimal.Decimal(1),
         "a_uuid": uuid.UUID(int=1), "dates": [], "pair": (1, ""), "numbers": (), "tags": set(),
         "prices": {}, "by_id": {}, "nested": []},
    )
    assert payload["with_default"] == 7
    assert payload["with_factory"] == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, r"tests.testapp.channels.Message is missing required field 'text'"),
        ({"text": "a", "txt": "b"}, r"tests.testapp.channels.Message has no field 'txt'"),
        ({"text": 1}, r"tests.testapp.channels.Message.text: expected str, got int"),
    ],
)
def test_encode_fields_errors_name_the_channel_and_the_field(kwargs, message):
    with pytest.raises(TypeError, match=message):
        payloads.encode_fields(Message, kwargs)


def test_decode_fields_tolerates_fields_added_and_removed():
    assert payloads.decode_fields(Message, {"text": "t", "gone": 1}) == {"text": "t"}


def test_load_keeps_numbers_exact():
    assert payloads.load('{"n": 0.10000000000000000001}') == {
        "n": decimal.Decimal("0.10000000000000000001")
    }


def test_build_instance_maps_columns_to_fields():
    legacy = payloads.build_instance(Legacy, {"LegacyID": 4, "Title Text": "t", "writer": 9})
    assert (legacy.legacy_id, legacy.title, legacy.writer_id) == (4, "t", 9)
    assert legacy._state.adding is True


def test_build_instance_tolerates_columns_added_and_removed():
    sku = payloads.build_instance(Sku, {"code": "A", "dropped_column": 1})
    assert sku.code == "A"
    assert sku.price is None


def test_build_instance_keeps_decimal_precision_and_inherited_columns():
    price = payloads.load('{"price": 1234567890.12345678901234567890}')["price"]
    assert payloads.build_instance(Sku, {"code": "A", "price": price}).price == decimal.Decimal(
        "1234567890.12345678901234567890"
    )
    restaurant = payloads.build_instance(
        Restaurant, {"id": 3, "name": "n", "place_ptr_id": 3, "serves_pizza": True}
    )
    assert (restaurant.pk, restaurant.name, restaurant.serves_pizza) == (3, "n", True)


def test_build_instance_of_nothing_is_none():
    assert payloads.build_instance(Sku, None) is None
