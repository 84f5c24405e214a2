"""A project as a new user makes it: built from the quickstart page's own code blocks, with
the migrations ``makemigrations`` writes, run by the real commands; and the same project made
on an earlier release of pgcelery, with notifications pending, then upgraded."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from tests import support

pytestmark = pytest.mark.e2e

QUICKSTART = support.ROOT / "docs" / "quickstart.md"
TESTING = support.ROOT / "docs" / "how-to" / "testing.md"
#: A release whose users' migrations must migrate cleanly on this one.
EARLIER_RELEASE = "5000ae3"
_BLOCK = re.compile(r'```(\w*)(?: title="([^"]+)")?\n(.*?)```', re.S)
_SHELL = "python manage.py shell"
_APPENDED = " (at the end)"


def page_blocks(page: Path) -> list[tuple[str, str]]:
    """A docs page's code blocks that have a title: (file path or command, code)."""
    return [(title, code) for _, title, code in _BLOCK.findall(page.read_text()) if title]


def quickstart_files() -> dict[str, str]:
    return dict(page_blocks(QUICKSTART))


def quickstart_emails() -> list[str]:
    """The subjects the page shows the listeners' emails end with."""
    [shown] = re.findall(r">>> sorted\(email\.subject[^\n]*\n(\[.*?\])\n",
                         QUICKSTART.read_text())
    return ast.literal_eval(shown)


class Project:
    """The quickstart's project in ``directory``, on its own database and Redis database."""

    def __init__(self, directory: Path, database: str, old_pgcelery: Path | None = None) -> None:
        self.directory = directory
        self.database = database
        self.env = {key: value for key, value in os.environ.items()
                    if key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
        self.env["PYTHONUNBUFFERED"] = "1"
        if old_pgcelery is not None:
            self.env["PYTHONPATH"] = str(old_pgcelery)

    def build(self) -> None:
        self.directory.mkdir(exist_ok=True)
        self.run("-m", "django", "startproject", "proj", ".")
        self.manage("startapp", "shop")
        for title, code in quickstart_files().items():
            if title == _SHELL:
                continue
            path = self.directory / title.removesuffix(_APPENDED)
            mode = "a" if title.endswith(_APPENDED) else "w"
            with open(path, mode) as written:
                written.write(("\n" if mode == "a" else "") + code)
        # The page's project, pointed at this test's database and broker.
        settings = connection.settings_dict
        with open(self.directory / "proj" / "settings.py", "a") as written:
            written.write(
                f"\nDATABASES['default'].update(NAME={self.database!r}, "
                f"USER={settings['USER']!r}, PASSWORD={settings['PASSWORD']!r}, "
                f"HOST={settings['HOST'] or '127.0.0.1'!r}, PORT={settings['PORT'] or '5432'!r})"
                f"\nCELERY_BROKER_URL = {support.isolated_broker_url()!r}\n"
            )

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, *argv], cwd=self.directory, env=self.env,
                                capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
        return result

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("manage.py", *args, check=check)

    def shell(self, code: str) -> str:
        """What ``code`` printed last in ``manage.py shell``."""
        printed = self.manage("shell", "-c", code).stdout.strip().splitlines()
        return printed[-1] if printed else ""

    def emails(self) -> list[str]:
        return json.loads(self.shell(
            "import json; from shop.models import Email; "
            "print(json.dumps([e.subject for e in Email.objects.order_by('pk')]))"))

    def pending(self) -> int:
        [channel_rows] = [json.loads(self.manage("pgcelery_status", "--json",
                                                 check=False).stdout)["channels"]]
        return sum(row["pending"] for row in channel_rows)

    def start(self, log_dir: Path) -> list[support.Process]:
        """The bridge and a worker, as the page starts them."""
        return [support.start_bridge(log_dir, env=self.env, name="quickstart-bridge",
                                     cwd=self.directory),
                support.start_worker(log_dir, env=self.env, name="quickstart-worker",
                                     queues="celery", cwd=self.directory)]

    def wait_for_emails(self, count: int) -> list[str]:
        """The emails once ``count`` are sent and nothing is pending, a moment later."""
        support.wait_until(lambda: len(self.emails()) >= count and self.pending() == 0,
                           timeout=120, what=f"{count} emails")
        time.sleep(2)  # room for a duplicate to show
        return self.emails()


@pytest.fixture
def database(fresh_databases):
    return fresh_databases()


def stop(processes: list[support.Process]) -> None:
    for process in processes:
        process.stop()


def test_the_quickstart_project_runs_with_no_hand_edit(tmp_path, database, log_dir):
    project = Project(tmp_path / "shop", database)
    project.build()
    project.manage("makemigrations", "shop")
    project.manage("migrate")
    assert "no issues" in project.manage("check").stdout
    project.manage("makemigrations", "--check", "--dry-run")
    processes = project.start(log_dir)
    try:
        project.shell(quickstart_files()[_SHELL])
        assert sorted(project.wait_for_emails(2)) == quickstart_emails()
    finally:
        stop(processes)


BULK_ORDERS = ("from shop.models import Order; Order.objects.bulk_create("
               "[Order(customer=f'c{n}@example.com', total=n) for n in range(3)])")


def test_an_upgrade_from_an_earlier_release_delivers_what_was_pending_once(
        tmp_path, database, log_dir):
    old = Project(tmp_path / "shop", database, old_pgcelery=support.released_pgcelery(
        EARLIER_RELEASE, tmp_path / "old"))
    old.build()
    assert str(tmp_path / "old") in old.shell("import pgcelery; print(pgcelery.__file__)")
    old.manage("makemigrations", "shop")
    old.manage("migrate")
    old.shell(quickstart_files()[_SHELL])
    old.shell(BULK_ORDERS)

    new = Project(tmp_path / "shop", database)
    assert str(support.ROOT) in new.shell("import pgcelery; print(pgcelery.__file__)")
    new.manage("migrate")
    assert new.pending() == 5
    new.manage("makemigrations", "--check", "--dry-run")
    assert "no issues" in new.manage("check").stdout
    processes = new.start(log_dir)
    try:
        emails = new.wait_for_emails(5)
        new.shell("from shop.models import Order; Order.objects.create(customer='new@x.org', "
                  "total=1)")
        emails_after = new.wait_for_emails(6)
    finally:
        stop(processes)
    assert sorted(emails) == sorted([*quickstart_emails(), "Order 2 confirmed: 0.00",
                                     "Order 3 confirmed: 1.00", "Order 4 confirmed: 2.00"])
    assert emails_after[:5] == emails and emails_after[5] == "Order 5 confirmed: 1.00"


def deliver_pending_emails(project: Project, write: str) -> str:
    """Runs ``write`` in the project's shell, then delivers what is pending in process."""
    return project.shell(
        f"import pgcelery.testing\nfrom shop.models import Email, Order\n{write}\n"
        "print(pgcelery.testing.deliver_pending(), "
        "[email.subject for email in Email.objects.order_by('pk')])")


def test_a_renamed_table_gets_its_trigger_after_the_rename(tmp_path, database):
    project = Project(tmp_path / "shop", database)
    project.build()
    project.manage("makemigrations", "shop")
    project.manage("migrate")
    models = project.directory / "shop" / "models.py"
    models.write_text(models.read_text().replace(
        "    total = models.DecimalField(max_digits=10, decimal_places=2)\n",
        "    total = models.DecimalField(max_digits=10, decimal_places=2)\n\n"
        "    class Meta:\n        db_table = 'shop_orders'\n", 1))
    project.manage("makemigrations", "shop")
    project.manage("migrate")
    project.manage("makemigrations", "--check", "--dry-run")
    written = deliver_pending_emails(
        project, "Order.objects.create(customer='ada@example.com', total=3)")
    assert written == "1 ['Order 1 confirmed: 3.00']"


UNMANAGED = {
    "shop/models.py": (
        "\n\nclass Legacy(models.Model):\n    name = models.CharField(max_length=50)\n\n"
        "    class Meta:\n        managed = False\n        db_table = 'legacy_names'\n"),
    "shop/channels.py": (
        "\n\nfrom shop.models import Legacy\n\n\n@dataclass\n"
        "class LegacyChannel(TriggerChannel):\n    model = Legacy\n"),
    "shop/listeners.py": (
        "\n\nfrom shop.channels import LegacyChannel\n\n\n"
        "@pgcelery.post_insert_listener(LegacyChannel)\ndef legacy_added(old, new):\n"
        "    Email.objects.create(to='admin@example.com', subject=f'legacy {new.name}')\n"),
}


def test_a_listener_on_an_unmanaged_model_migrates_and_the_bridge_says_how_to_install_it(
        tmp_path, database):
    project = Project(tmp_path / "shop", database)
    project.build()
    for path, code in UNMANAGED.items():
        with open(project.directory / path, "a") as written:
            written.write(code)
    project.manage("makemigrations", "shop")
    project.manage("migrate")
    project.manage("makemigrations", "--check", "--dry-run")
    assert "no issues" in project.manage("check").stdout
    reasons = project.shell(
        "from django.db import connection\n"
        "connection.cursor().execute('CREATE TABLE legacy_names (id bigserial PRIMARY KEY, "
        "name varchar(50))')\n"
        "from pgcelery import checks\nprint(checks.uninstalled_listener_triggers('default'))")
    [hint] = re.findall(r"`(migrations\.RunPython\(.*?\))`", reasons)
    assert "Django migrates nothing of a model with managed = False" in reasons
    install = re.fullmatch(r"migrations\.RunPython\(lambda apps, schema_editor: (.*)\)",
                           hint).group(1).replace("schema_editor.connection.alias", "'default'")
    written = deliver_pending_emails(
        project, f"import pgtrigger\n{install}\nfrom shop.models import Legacy\n"
                 "Legacy.objects.create(name='ada')")
    assert written == "1 ['legacy ada']"


def test_the_testing_pages_tests_pass_in_the_quickstart_project(tmp_path, database):
    """The page's shop/tests.py, run by Django's test runner and by pytest-django."""
    project = Project(tmp_path / "shop", database)
    project.build()
    project.manage("makemigrations", "shop")
    tests = "\n\n".join(code for title, code in page_blocks(TESTING) if title == "shop/tests.py")
    (project.directory / "shop" / "tests.py").write_text(tests)
    django_runner = project.manage("test", "shop", "--noinput")
    assert re.search(r"^Ran 3 tests in .*\n\nOK", django_runner.stderr, re.M), django_runner.stderr
    pytest_run = project.run("-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--ds=proj.settings", "shop/tests.py")
    assert re.search(r"^4 passed", pytest_run.stdout, re.M), pytest_run.stdout
