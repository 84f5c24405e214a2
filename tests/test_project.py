"""The repository as a user meets it: the wheel, the migrations, docker-compose, the commands."""

import os
import re
import subprocess
import sys
import tarfile
import uuid
import zipfile

import pytest
import yaml
from django.db import connection

from tests import support

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    wheel_dir = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheel_dir,
         support.ROOT], check=True, timeout=300,
    )
    [built] = wheel_dir.glob("pgcelery-*.whl")
    return built


def test_the_wheel_ships_the_package_typed_with_its_migrations_and_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pgcelery/py.typed", "pgcelery/migrations/0001_initial.py",
            "pgcelery/management/commands/pgcelery_bridge.py"} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "example_project/")) for name in names)


def test_the_wheel_alone_runs_the_example_end_to_end(wheel, tmp_path, transactional_db):
    """A clean virtualenv with only the wheel and what it declares: migrate, bridge, worker."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", wheel], check=True, timeout=600)
    name = f"pgcelery_wheel_{uuid.uuid4().hex[:8]}"
    url = support.database_url({**connection.settings_dict, "NAME": name})
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env.update(DATABASE_URL=url, CELERY_BROKER_URL=support.isolated_broker_url())
    try:
        demo = subprocess.run([python, "demo.py"], cwd=support.EXAMPLE, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Ada has 1 post(s): 'Welcome! This is your first post'" in demo.stdout
    assert "was read 3 time(s)" in demo.stdout


def test_the_sdist_carries_tests_that_run(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", tmp_path, support.ROOT],
                   check=True, timeout=300, capture_output=True)
    [sdist] = tmp_path.glob("pgcelery-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    [unpacked] = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert (unpacked / "LICENSE").exists() and (unpacked / "example_project/manage.py").exists()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "unit"],
                            cwd=unpacked, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)


def test_the_triggers_in_the_migrations_are_up_to_date():
    result = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=support.EXAMPLE, env=support.subprocess_env(), capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout


def test_docker_compose_runs_web_bridge_and_workers_after_healthy_services():
    compose = yaml.safe_load((support.ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "web", "bridge", "worker"}
    for name in ("postgres", "redis", "web"):
        assert services[name]["healthcheck"]["test"]
    assert services["web"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}
    }
    for name in ("bridge", "worker"):
        assert services[name]["depends_on"] == {"web": {"condition": "service_healthy"}}
        assert services[name]["environment"]["DATABASE_URL"].endswith("@postgres:5432/pgcelery")
        assert services[name]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert "migrate" in services["web"]["command"] and "runserver" in services["web"]["command"]
    bridge = services["bridge"]["command"].split()
    assert bridge[:3] == ["python", "manage.py", "pgcelery_bridge"]
    port = bridge[bridge.index("--metrics-port") + 1]
    assert f"http://127.0.0.1:{port}/health" in services["bridge"]["healthcheck"]["test"][-1]
    assert services["worker"]["command"].startswith("celery -A proj worker")


def test_ci_runs_the_readme_test_command():
    readme = (support.ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^make test( |$)", (support.ROOT / ".ci" / "run").read_text(), re.M)


def test_the_delivery_guarantees_name_tests_that_exist():
    concepts = (support.ROOT / "docs" / "concepts.md").read_text()
    section = concepts.split("## Delivery guarantees")[1].split("\n## ")[0]
    referenced = []
    for row in section.splitlines():
        if not row.startswith("| **"):
            continue
        current = None
        for module, name in re.findall(r"`(test_\w+\.py)?(?:::(\w+))?`", row.split("|")[-2]):
            current = module or current
            referenced.append((current, name))
    assert len(referenced) >= 20
    for module, name in referenced:
        source = (support.ROOT / "tests" / module).read_text()
        assert not name or f"def {name}(" in source, f"{module}::{name}"
