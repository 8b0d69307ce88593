"""12-factor settings: malformed values stop start-up naming the variable; defaults apply."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TASK_EXPIRES_IN", "soon"),
        ("TASK_EXPIRES_IN", "-5"),
        ("TASK_EXPIRES_IN", "0"),
        ("RESULT_TTL", "1 day"),
        ("TASKS_MAX_EXPIRES_IN", "forever"),
        ("TASKS_MAX_PAYLOAD_BYTES", "1MB"),
        ("RETENTION_BATCH_SIZE", "0"),
        ("RETENTION_RESULT_BATCH_SIZE", "0"),
        ("RETENTION_ORPHAN_GRACE", "an hour"),
        ("RETENTION_LAG_ALERT", "nan"),
        ("RETENTION_CLAIM_TIMEOUT", "-1"),
        ("DJANGO_DEBUG", "maybe"),
        ("DATABASE_URL", "nosuchdb://x"),
        ("CELERY_BROKER_URL", "carrier-pigeon://coop"),
    ],
)
def test_malformed_variable_stops_startup_and_names_itself(variable: str, value: str) -> None:
    result = manage("check", **{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr


@pytest.mark.parametrize("key", ["", "short", "django-insecure-development-only-key-do-not-use-in-production-0000"])
def test_missing_or_weak_secret_key_stops_startup_without_debug(key: str) -> None:
    result = manage("check", DJANGO_SECRET_KEY=key, DJANGO_DEBUG="false")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_valid_environment_passes_check() -> None:
    result = manage("check", TASK_EXPIRES_IN="3600", RESULT_TTL="", RETENTION_ORPHAN_GRACE="0")
    assert result.returncode == 0, result.stderr


def test_defaults() -> None:
    from django.conf import settings

    assert settings.TASKS_MAX_PAYLOAD_BYTES == 1024 * 1024
    assert settings.TASKS_MAX_EXPIRES_IN.days == 3650
    assert settings.RETENTION_ORPHAN_GRACE.total_seconds() == 3600
    assert settings.RETENTION_CLAIM_TIMEOUT.total_seconds() == 300
    assert settings.STORAGES["default"]["BACKEND"] == "storages.backends.s3.S3Storage"


def test_duration_variables_parse_seconds_and_empty_means_never() -> None:
    code = (
        "from django.conf import settings as s; "
        "print(s.TASK_EXPIRES_IN.total_seconds(), s.RESULT_TTL, s.STORAGES['default']['BACKEND'])"
    )
    result = manage("shell", "-c", code, TASK_EXPIRES_IN="90", RESULT_TTL="", AWS_STORAGE_BUCKET_NAME="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["90.0", "None", "django.core.files.storage.FileSystemStorage"]


def test_tasks_imports_modules_register_types_in_every_process() -> None:
    code = "from tasks_app import registry; print(','.join(registry.names()))"
    result = manage("shell", "-c", code, TASKS_IMPORTS="tests.extra_handlers")
    assert result.returncode == 0, result.stderr
    names = result.stdout.strip().splitlines()[-1].split(",")
    assert "extra.imported" in names
    assert "demo.echo" in names  # found in tasks_app/handlers.py without TASKS_IMPORTS
    missing = manage("check", TASKS_IMPORTS="tests.no_such_module")
    assert missing.returncode != 0
    assert "no_such_module" in missing.stderr


@pytest.mark.django_db
def test_migrations_match_models() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.parametrize("command", ["migrate", "makemigrations", "retention_status", "shell"])
def test_every_command_reports_the_configuration_error_itself(command: str) -> None:
    # Django would hide it behind "Models aren't loaded yet" for most commands
    result = manage(command, RETENTION_BATCH_SIZE="lots")
    assert result.returncode != 0
    assert "RETENTION_BATCH_SIZE" in result.stderr
    assert "AppRegistryNotReady" not in result.stderr


def test_manage_py_honours_the_settings_option() -> None:
    result = manage("check", "--settings=no_such_settings_module")
    assert result.returncode != 0
    assert "no_such_settings_module" in result.stderr


def test_a_second_terminal_finds_the_embedded_key_and_database(tmp_path: Path) -> None:
    # Given the var/ folder `make run` leaves behind: its generated key and its SQLite database
    key = "k" * 64
    (tmp_path / "secret_key").write_text(key + "\n")
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "DATABASE_", "CELERY_", "AWS_"))
    }
    environment["VAR_DIR"] = str(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
        )

    assert run("migrate", "--noinput", "-v0").returncode == 0
    # When an operator runs the README's commands with nothing exported
    status = run("retention_status")
    # Then they work against the embedded database
    assert status.returncode == 0, status.stderr
    assert (tmp_path / "db.sqlite3").is_file()


def test_an_empty_secret_key_is_not_replaced_by_the_embedded_one(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("k" * 64)
    result = manage("check", DJANGO_SECRET_KEY="", DJANGO_DEBUG="false", VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_a_malformed_database_url_is_named_without_its_password() -> None:
    result = manage("check", DATABASE_URL="nosuchdb://alice:hunter2-secret@db:5432/tasks")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "hunter2-secret" not in result.stderr
