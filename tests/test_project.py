"""The repository as a user meets it: the wheel, the migrations, docker-compose, the commands."""

import re
import subprocess
import sys
import zipfile

import yaml

from tests import support


def test_the_wheel_ships_the_package_typed_with_its_migrations(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path,
         support.ROOT], check=True, timeout=300,
    )
    [wheel] = tmp_path.glob("pgcelery-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pgcelery/py.typed", "pgcelery/migrations/0001_initial.py",
            "pgcelery/management/commands/pgcelery_bridge.py"} <= names
    assert not any(name.startswith(("tests/", "example_project/")) for name in names)


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
    assert services["bridge"]["command"] == "python manage.py pgcelery_bridge"
    assert services["worker"]["command"].startswith("celery -A proj worker")


def test_ci_runs_the_readme_test_command():
    readme = (support.ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "\nmake test\n" in (support.ROOT / ".ci" / "run").read_text()


def test_the_delivery_guarantees_name_tests_that_exist():
    readme = (support.ROOT / "README.md").read_text()
    section = readme.split("## Delivery guarantees")[1].split("\n## ")[0]
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
