import dataclasses

import pytest

import pgcelery
from pgcelery import channels
from tests.testapp.channels import AccountNameChannel, Message, WriterChannel
from tests.testapp.models import Writer


def test_channel_name_is_the_dotted_path():
    assert channels.channel_name(Message) == "tests.testapp.channels.Message"


def test_resolve_takes_the_class_or_its_dotted_path():
    assert channels.resolve(Message) is Message
    assert channels.resolve("tests.testapp.channels.WriterChannel") is WriterChannel


def test_trigger_channel_keeps_pgpubsub_attributes():
    assert WriterChannel.model is Writer
    assert WriterChannel.lock_notifications is True
    assert [field.name for field in dataclasses.fields(WriterChannel)] == [
        "old", "new", "context"]
    writer = Writer(name="w")
    assert WriterChannel(old=None, new=writer).new is writer
    assert WriterChannel().context == {}


def test_pg_channel_is_the_name_when_it_fits():
    assert channels.pg_channel("myapp.channels.PostReads") == "myapp.channels.PostReads"


def test_pg_channel_of_a_long_name_fits_63_bytes_and_stays_distinct():
    long_a = "app." + "é" * 40 + ".A"
    long_b = "app." + "é" * 40 + ".B"
    derived = {channels.pg_channel(name) for name in (long_a, long_b)}
    assert len(derived) == 2
    assert all(len(name.encode()) <= 63 for name in derived)
    assert channels.pg_channel(long_a) == channels.pg_channel(long_a)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("Message", "not a dotted path"),
        ("nowhere.channels.Message", "cannot import module 'nowhere.channels'"),
        ("tests.testapp.channels.Nope", "has no Channel or TriggerChannel named 'Nope'"),
        ("tests.testapp.models.Writer", "has no Channel or TriggerChannel named 'Writer'"),
    ],
)
def test_unknown_channel_paths_raise_a_clear_error(path, message):
    with pytest.raises(pgcelery.UnknownChannel, match=message) as info:
        channels.resolve(path)
    assert repr(path) in str(info.value)


class NotDecorated(pgcelery.Channel):
    n: int


@dataclasses.dataclass
class NoModel(pgcelery.TriggerChannel):
    pass


class Outer:
    @dataclasses.dataclass
    class Nested(pgcelery.Channel):
        n: int


def test_a_channel_must_be_a_dataclass():
    with pytest.raises(TypeError, match="must be decorated with @dataclass"):
        channels.resolve(NotDecorated)


def test_a_trigger_channel_needs_a_model():
    with pytest.raises(TypeError, match="must set `model`"):
        channels.resolve(NoModel)


def test_resolve_rejects_other_objects():
    with pytest.raises(TypeError, match="Expected a Channel or TriggerChannel"):
        channels.resolve(Writer)


def local_channel():
    @dataclasses.dataclass
    class Local(pgcelery.Channel):
        n: int

    return Local


@pytest.mark.parametrize("channel", [Outer.Nested, local_channel()], ids=["nested", "local"])
def test_a_channel_that_cannot_be_imported_again_is_refused_where_it_is_used(channel):
    refused = "is defined inside a function or a class, where the bridge and the workers"
    with pytest.raises(TypeError, match=refused):
        pgcelery.listener(channel)
    with pytest.raises(TypeError, match=refused):
        pgcelery.notify(channel, n=1)


@pytest.mark.parametrize(("options", "message"), [
    ({"include_fields": ["name"], "exclude_fields": ["email"]},
     "sets both include_fields and exclude_fields"),
    ({"exclude_fields": ["email", "nope"]}, "exclude_fields names 'nope', not a field of "
                                            "testapp.Writer"),
    ({"include_fields": "name"}, "include_fields must be a list of field names of "
                                 "testapp.Writer, not 'name'"),
    ({"exclude_fields": ["id"]}, "exclude_fields cannot leave out the primary key 'id'"),
])
def test_column_selection_is_checked_where_the_channel_is_used(options, message):
    channel = dataclasses.make_dataclass("Selected", [], bases=(pgcelery.TriggerChannel,),
                                         namespace={"model": Writer, **options})
    channel.__module__ = __name__
    with pytest.raises(TypeError, match=message):
        pgcelery.post_insert_listener(channel)


def test_include_fields_keeps_the_primary_key_and_hides_the_rest():
    assert [f.name for f in channels.hidden_fields(AccountNameChannel)] == [
        "password", "api_token"]
