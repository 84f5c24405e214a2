"""Settings and command options: each unusable value stops at start, naming itself."""

import datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from pgcelery import conf
from pgcelery.bridge import Backoff
from tests import support


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("PGCELERY_BATCH_SIZE", 0, "PGCELERY_BATCH_SIZE must be an integer of at least 1; it is 0."),
    ("PGCELERY_BATCH_SIZE", "500", "PGCELERY_BATCH_SIZE must be an integer of at least 1"),
    ("PGCELERY_BATCH_BYTES", 0, "PGCELERY_BATCH_BYTES must be an integer of at least 1"),
    ("PGCELERY_SWEEP_INTERVAL", 0, "PGCELERY_SWEEP_INTERVAL must be a number of seconds greater "
                                   "than 0; it is 0."),
    ("PGCELERY_MAX_BACKOFF", -1, "PGCELERY_MAX_BACKOFF must be a number of seconds greater"),
    ("PGCELERY_ATOMIC_RETENTION", datetime.timedelta(0), "PGCELERY_ATOMIC_RETENTION must be"),
    ("PGCELERY_REDELIVER_AFTER", 0, "PGCELERY_REDELIVER_AFTER must be a number of seconds "
                                    "greater than 0; it is 0."),
    ("PGCELERY_UNKNOWN_GRACE", -1, "PGCELERY_UNKNOWN_GRACE must be a number of seconds of 0 "
                                  "or more; it is -1."),
    ("PGCELERY_CONTEXT_MAX_BYTES", 0, "PGCELERY_CONTEXT_MAX_BYTES must be an integer of at "
                                      "least 1; it is 0."),
    ("PGCELERY_DATABASE", "nope", "PGCELERY_DATABASE must be an alias of settings.DATABASES "
                                  "('default', 'other'); it is 'nope'."),
    ("PGCELERY_DATABASES", [], "PGCELERY_DATABASES must be a non-empty list"),
    ("PGCELERY_DATABASES", "default", "PGCELERY_DATABASES must be a non-empty list"),
    ("PGCELERY_DATABASES", ["default", "default"],
     "PGCELERY_DATABASES must be a list of distinct database aliases"),
    ("PGCELERY_DATABASES", ["default", "gone"], "PGCELERY_DATABASES must be an alias"),
    ("PGCELERY_CELERY_APP", "proj.nowhere.app", "PGCELERY_CELERY_APP is 'proj.nowhere.app', "
                                                "which cannot be imported"),
    ("PGCELERY_CELERY_APP", "proj.settings.DEBUG", "PGCELERY_CELERY_APP must be the dotted "
                                                   "path of a Celery app"),
])
def test_an_unusable_setting_is_named_with_its_value(setting, value, message):
    with override_settings(**{setting: value}), pytest.raises(ImproperlyConfigured) as raised:
        conf.check()
    assert str(raised.value).startswith(message)


def test_defaults_and_valid_values():
    conf.check()
    assert (conf.databases(), conf.batch_size(), conf.max_backoff()) == (["default"], 500, 30.0)
    with override_settings(PGCELERY_DATABASES=["other", "default"], PGCELERY_BATCH_SIZE=1,
                           PGCELERY_ATOMIC_RETENTION=60, PGCELERY_CELERY_APP="proj.celery:app"):
        assert conf.databases() == ["other", "default"]
        assert conf.batch_size() == 1
        assert conf.atomic_retention() == datetime.timedelta(seconds=60)
        assert conf.celery_app().main == "proj"
    with override_settings(PGCELERY_DATABASE="other"):
        assert conf.databases() == ["other"]


def test_backoff_doubles_up_to_its_ceiling_and_starts_again_after_a_success():
    backoff = Backoff(ceiling=3.0, first=0.5)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_stays_at_its_ceiling_through_any_number_of_failures():
    backoff = Backoff(ceiling=30.0)
    delays = [backoff.next_delay() for _ in range(5000)]  # 2**1024 overflowed a float
    assert max(delays) == delays[-1] == 30.0


@pytest.mark.e2e  # runs a manage.py command as a subprocess
@pytest.mark.parametrize(("command", "env", "message"), [
    (["pgcelery_bridge"], {"PGCELERY_TEST_SETTING": "PGCELERY_BATCH_SIZE=0"},
     "PGCELERY_BATCH_SIZE must be an integer of at least 1; it is 0."),
    (["pgcelery_bridge"], {"PGCELERY_TEST_SETTING": "PGCELERY_SWEEP_INTERVAL=0"},
     "PGCELERY_SWEEP_INTERVAL must be a number of seconds greater than 0; it is 0."),
    (["pgcelery_bridge", "--database", "default", "missing"], {},
     "--database must be an alias of settings.DATABASES ('default', 'other'); it is 'missing'."),
    (["pgcelery_status", "--database", "missing"], {},
     "--database must be an alias of settings.DATABASES"),
    (["pgcelery_failed", "--database", "missing"], {},
     "--database must be an alias of settings.DATABASES"),
])
def test_commands_stop_at_start_with_exit_1_naming_the_bad_value(command, env, message):
    result = support.manage(*command, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
