"""The bridge's /metrics, /health and JSON log lines, read off the real command."""

import json
import urllib.error
import urllib.request

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

import pgcelery
from pgcelery import metrics
from tests import support
from tests.support import insert_raw
from tests.testapp.channels import Counted, Message, Ping

pytestmark = [pytest.mark.connector]

MESSAGE = "tests.testapp.channels.Message"
PING = "tests.testapp.channels.Ping"
COUNTED = "tests.testapp.channels.Counted"


def get(port, path):
    """(status, body) of a GET on the bridge's metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(port):
    """{(sample name, frozenset of its labels): value} of the bridge's /metrics."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(port, name, **labels):
    return samples(port).get((name, frozenset(labels.items())))


def start_bridge(spawn, broker_url, *args):
    port = support.free_port()
    bridge = spawn.bridge("--metrics-port", str(port), *args,
                          env=support.subprocess_env(CELERY_BROKER_URL=broker_url))
    return bridge, port


@pytest.mark.usefixtures("transactional_db")
def test_metrics_count_what_was_published_and_read_what_waits(private_redis, spawn):
    with transaction.atomic():
        for n in range(30):
            pgcelery.notify(Message, text=f"m{n}")
        for n in range(12):
            pgcelery.notify(Ping, n=n)
        for n in range(7):
            pgcelery.notify(Counted, n=n)  # no bridge serves it
    insert_raw(MESSAGE, payload='{"text": 5}')  # fails: text is not a str
    bridge, port = start_bridge(spawn, private_redis.url, "--channels", MESSAGE, PING)
    support.wait_until(lambda: value(port, "pgcelery_pending", channel=MESSAGE) == 0
                       and value(port, "pgcelery_failed", channel=MESSAGE) == 1,
                       30, "the backlog gauges to show the drained outbox")
    found = samples(port)
    listener = "tests.testapp.listeners.message_received"
    assert found["pgcelery_published_total", frozenset(
        {"channel": MESSAGE, "listener": listener}.items())] == 30
    assert found["pgcelery_published_total", frozenset(
        {"channel": PING, "listener": "tests.testapp.listeners.ping"}.items())] == 12
    assert not any(name == "pgcelery_published_total" and ("channel", COUNTED) in labels
                   for name, labels in found)
    assert found["pgcelery_publish_delay_seconds_count", frozenset()] == 42
    assert 0 < found["pgcelery_publish_delay_seconds_sum", frozenset()] < 42 * 60
    assert found["pgcelery_pending", frozenset({"channel": COUNTED}.items())] == 7
    assert 0 < found["pgcelery_oldest_pending_seconds",
                     frozenset({"channel": COUNTED}.items())] < 600
    assert found["pgcelery_pending", frozenset({"channel": PING}.items())] == 0
    assert found["pgcelery_failed", frozenset({"channel": PING}.items())] == 0
    assert found["pgcelery_up", frozenset({"dependency": "database"}.items())] == 1
    assert found["pgcelery_up", frozenset({"dependency": "broker"}.items())] == 1
    assert support.queue_length("celery", private_redis.url) == 42
    assert get(port, "/nothing")[0] == 404
    assert bridge.stop() == 0


@pytest.mark.faults
@pytest.mark.usefixtures("transactional_db")
def test_up_and_health_follow_a_broker_outage(private_redis, spawn):
    bridge, port = start_bridge(spawn, private_redis.url)

    def health():
        status, body = get(port, "/health")
        return status, json.loads(body)

    support.wait_until(lambda: health()[0] == 200, 30, "/health to answer 200")
    assert health()[1]["status"] == "ok"
    assert value(port, "pgcelery_up", dependency="broker") == 1
    private_redis.stop()
    support.wait_until(lambda: health()[0] == 503, 30, "/health to answer 503")
    status, body = health()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("broker unreachable: ")
    assert body["dependencies"] == {"database 'default'": "up", "broker": "down"}
    assert value(port, "pgcelery_up", dependency="broker") == 0
    assert value(port, "pgcelery_up", dependency="database") == 1
    private_redis.start()
    support.wait_until(lambda: health()[0] == 200, 30, "/health to answer 200 again")
    assert value(port, "pgcelery_up", dependency="broker") == 1
    assert bridge.stop() == 0
    assert bridge.log().count("Broker unavailable") == 1


@pytest.mark.usefixtures("transactional_db")
def test_json_log_lines_carry_the_notification(spawn):
    failed = insert_raw(MESSAGE, payload="{}")
    bridge = spawn.bridge("--log-format", "json")
    bridge.wait_for_log("failed")
    assert bridge.stop() == 0
    lines = [json.loads(line) for line in bridge.log().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    [failure] = [line for line in lines if line.get("notification") == failed]
    assert failure["level"] == "ERROR"
    assert failure["channel"] == MESSAGE
    assert failure["message"].startswith(f"Notification {failed} on {MESSAGE} failed: ")


def test_a_bridge_without_progress_is_unhealthy():
    state = metrics.State([metrics.DependencyState("database", "'default'", True)], 71.0, 70.0)
    serving, body = metrics.Metrics([], lambda: state, "127.0.0.1", 0).health()
    assert not serving
    assert body["reason"] == "the bridge has made no progress for 71 s (more than 70 s)"


@pytest.mark.django_db
@pytest.mark.parametrize("port", [0, 70000, "9100", True])
def test_an_unusable_metrics_port_stops_the_bridge_at_start(port):
    with override_settings(PGCELERY_METRICS_PORT=port), pytest.raises(
            CommandError, match=r"PGCELERY_METRICS_PORT must be a TCP port number from 1 to "
                                rf"65535; it is {port!r}\."):
        call_command("pgcelery_bridge")


@pytest.mark.usefixtures("transactional_db")
def test_a_metrics_port_in_use_stops_the_bridge_with_what_to_do():
    port = support.free_port()
    with support.listening(port), pytest.raises(
            CommandError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port} .*Choose a free "
                                "port"):
        call_command("pgcelery_bridge", "--metrics-port", str(port))
