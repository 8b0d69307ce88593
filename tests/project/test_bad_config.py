"""Malformed command arguments and environment variables: a clear error naming the value, a non-zero
exit code, no traceback, and nothing written (no rows changed, no file created).

Each case runs ``manage.py`` in a subprocess against the test database, which holds a task that
is due for deletion: a command that ran anyway would purge it and write a sweep run and audit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from retention.models import AuditRecord, SweepRun
from tasks_app.models import Task, TaskStatus

ROOT = Path(__file__).resolve().parents[2]


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    db = connection.settings_dict
    database = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DATABASE_URL": database, **env},
    )  # fmt: skip


@pytest.fixture
def due_task(transactional_db: None) -> Task:
    """A finished task past its expiry: any sweep that ran would purge it."""
    now = timezone.now()
    return Task.objects.create(
        task_type="demo.echo", status=TaskStatus.SUCCEEDED, payload={}, timeout=timedelta(minutes=1),
        created_at=now - timedelta(days=2), status_changed_at=now, finished_at=now - timedelta(days=1),
        expires_at=now - timedelta(hours=1),
    )  # fmt: skip


def state() -> tuple[list[tuple[Any, str]], int, int]:
    tasks = sorted((str(pk), status) for pk, status in Task.objects.values_list("pk", "status"))
    return tasks, SweepRun.objects.count(), AuditRecord.objects.count()


def assert_refused(result: subprocess.CompletedProcess[str], *named: str) -> None:
    assert result.returncode != 0, result.stdout
    for text in named:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["retention_sweep", "--kind", "bogus"], ["'bogus'"]),
        (["retention_sweep", "--limit", "-1"], ["--limit", "'-1'"]),
        (["retention_sweep", "--limit", "0"], ["--limit", "'0'"]),
        (["retention_sweep", "--limit", "ten"], ["--limit", "'ten'"]),
        (["retention_sweep", "--dry-run", "--limit", "1.5"], ["--limit", "'1.5'"]),
        (["retention_sweep", "--kind"], ["--kind"]),
        (["retention_report", "--since", "garbage", "--until", "2026-01-31"], ["--since", "'garbage'"]),
        (["retention_report", "--since", "2026-01-01", "--until", "2026-13-45"], ["--until", "'2026-13-45'"]),
        (["retention_report", "--since", "2026-02-01", "--until", "2026-01-01"], ["'2026-02-01'", "'2026-01-01'"]),
        (["retention_report", "--since", "2026-01-01T00:00:00", "--until", "2026-01-31"], ["'2026-01-01T00:00:00'"]),
        (["retention_report", "--until", "2026-01-31"], ["--since"]),
        (["retention_preview", "--bogus"], ["--bogus"]),
        (["retention_status", "--bogus"], ["--bogus"]),
    ],
)
def test_malformed_command_arguments_are_refused_and_write_nothing(
    due_task: Task, args: list[str], named: list[str]
) -> None:
    before = state()
    result = manage(*args)
    assert_refused(result, *named)
    assert state() == before


@pytest.mark.parametrize("target", ["a folder", "a missing folder"])
def test_report_output_that_cannot_be_written_is_refused_and_creates_nothing(
    due_task: Task, tmp_path: Path, target: str
) -> None:
    # given --output naming a folder, or a file in a folder that does not exist
    output = tmp_path / "reports" if target == "a folder" else tmp_path / "missing" / "audit.csv"
    if target == "a folder":
        output.mkdir()
    before = (state(), sorted(p.name for p in tmp_path.rglob("*")))

    # when the report is asked for, then it is refused naming the path, and nothing was created
    result = manage("retention_report", "--since", "2026-01-01", "--until", "2026-01-31", "--output", str(output))
    assert_refused(result, "--output", str(output))
    assert (state(), sorted(p.name for p in tmp_path.rglob("*"))) == before


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "postgres://tasks@127.0.0.1:notaport/tasks"),
        ("DATABASE_URL", "no-scheme-at-all"),
        ("CELERY_BROKER_URL", "redis://127.0.0.1:6379/zero"),
        ("CELERY_BROKER_URL", "carrier-pigeon://coop"),
        ("RETENTION_BATCH_SIZE", "abc"),
        ("RETENTION_BATCH_SIZE", "-3"),
        ("RETENTION_BATCH_SIZE", "100000"),
        ("TASK_EXPIRES_IN", "-5"),
        ("TASK_EXPIRES_IN", "1e400"),
        ("RESULT_TTL", "inf"),
        ("RETENTION_CLAIM_TIMEOUT", "1e12"),
        ("RETENTION_ORPHAN_GRACE", "1e12"),
        ("API_THROTTLE_USER", "fast"),
        ("API_THROTTLE_ANON", "10/fortnight"),
        ("AWS_S3_ADDRESSING_STYLE", "sideways"),
        ("AWS_S3_ENDPOINT_URL", "minio:9000"),
        ("AWS_S3_ENDPOINT_URL", "http://minio:port"),
        ("AWS_REQUEST_CHECKSUM_CALCULATION", "always"),
    ],
)
def test_malformed_environment_variable_names_itself_and_its_value(variable: str, value: str) -> None:
    result = manage("check", **{variable: value})
    assert_refused(result, variable, repr(value))


@pytest.mark.parametrize("variable", ["RETENTION_SEAL_KEY", "RETENTION_SEAL_PREVIOUS_KEYS"])
def test_a_seal_key_without_its_id_is_refused_without_echoing_the_secret(variable: str) -> None:
    result = manage("check", **{variable: "s3cret-without-an-id"})
    assert_refused(result, variable, "KEY_ID:SECRET")
    assert "s3cret-without-an-id" not in result.stderr + result.stdout


def test_a_command_under_malformed_environment_writes_nothing(due_task: Task) -> None:
    before = state()
    result = manage("retention_sweep", RETENTION_BATCH_SIZE="abc")
    assert_refused(result, "RETENTION_BATCH_SIZE", "'abc'")
    assert state() == before


def test_the_same_commands_with_good_arguments_do_write(due_task: Task, tmp_path: Path) -> None:
    # the control: the cases above are refused for their values, not because the command cannot run here
    output = tmp_path / "audit.csv"
    swept = manage("retention_sweep", "--kind", "tasks", "--limit", "5")
    assert swept.returncode == 0, swept.stderr
    assert Task.objects.get(pk=due_task.pk).status == TaskStatus.EXPIRED
    since = (timezone.now() - timedelta(days=1)).date().isoformat()
    until = (timezone.now() + timedelta(days=1)).date().isoformat()
    report = manage("retention_report", "--since", since, "--until", until, "--output", str(output))
    assert report.returncode == 0, report.stderr
    assert str(due_task.pk) in output.read_text()
