"""/metrics: right values after known work done in two other processes, valid exposition, bounded queries."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from retention.models import AuditRecord, SweepRun
from retention.monitoring import metrics as retention_metrics
from tasks_app import executor
from tasks_app import metrics as task_metrics
from tasks_app.models import MetricTotal, Task, TaskStatus
from tasks_app.services import submit

ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = """
import os, sys
import django
django.setup()
from tasks_app import executor
for task_id in sys.argv[1:]:
    assert executor.execute(task_id, worker=f"proc-{os.getpid()}") == "succeeded", task_id
"""


def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics and index every sample: {sample name: {sorted labels: value}}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def database_url() -> str:
    """The test database's URL, for another process."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def run_worker_process(task_ids: list[str]) -> None:
    """Execute tasks in a separate Python process against the test database (as a worker would)."""
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "project.settings"}
    result = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, *task_ids],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def queued_task(run_at: Any, **fields: Any) -> Task:
    return Task.objects.create(
        task_type="demo.echo",
        status=TaskStatus.QUEUED,
        payload={"n": 1},
        run_at=run_at,
        timeout=timedelta(seconds=30),
        **{"created_at": run_at, **fields},
    )


def finished_task(**fields: Any) -> Task:
    now = timezone.now()
    return Task.objects.create(
        task_type="demo.echo",
        status=TaskStatus.SUCCEEDED,
        timeout=timedelta(seconds=30),
        finished_at=now - timedelta(hours=2),
        **fields,
    )


@pytest.mark.django_db(transaction=True)
def test_metrics_after_known_work_in_two_processes(client: Any) -> None:
    # given 6 tasks due 100 s ago, run by two other processes (three each), and a task overdue for deletion
    now = timezone.now()
    tasks = [str(queued_task(now - timedelta(seconds=100)).pk) for _ in range(6)]
    finished_task(expires_at=now - timedelta(seconds=500))
    run = SweepRun.objects.create(kind="tasks", finished_at=now, purged=4, objects_deleted=9, bytes_freed=1234)
    SweepRun.objects.create(kind="tasks", finished_at=now, failed=2, errors=["boom"])
    AuditRecord.objects.create(
        task_id=uuid.uuid4(), action="user_erasure", reason="user_request", objects_deleted=2, bytes_freed=10
    )

    lateness = "tasks_dispatch_lateness_seconds"
    task_metrics.flush()  # this process's own observations (earlier tests) are not part of it
    before = scrape(client)

    # when two worker processes run them and exit, and a third (this one) serves /metrics
    run_worker_process(tasks[:3])
    run_worker_process(tasks[3:])
    samples = scrape(client)

    # then every process's starts are counted, each 100 s or more late (≤ 300 s: the bucket above)
    def added(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return samples[name][labels] - before[name][labels]

    assert samples["tasks_by_status"][(("status", "succeeded"),)] == 7
    assert samples["tasks_by_status"][(("status", "queued"),)] == 0
    assert added(f"{lateness}_count") == 6
    assert added(f"{lateness}_bucket", (("le", "60.0"),)) == 0
    assert added(f"{lateness}_bucket", (("le", "300.0"),)) == 6
    assert 600 <= added(f"{lateness}_sum") < 1800
    # and retention reads its numbers from the database
    assert 500 <= samples["retention_lag_seconds"][()] < 700
    assert samples["retention_due"][(("reason", "expires_at"),)] == 1
    assert samples["retention_purged_total"][(("kind", "tasks"),)] == 4
    assert samples["retention_objects_deleted_total"][(("kind", "tasks"),)] == 9
    assert samples["retention_freed_bytes_total"][(("kind", "tasks"),)] == 1234
    assert samples["retention_freed_bytes_total"][(("kind", "direct"),)] == 10
    assert samples["retention_sweep_failed_items_total"][(("kind", "tasks"),)] == 2
    assert samples["retention_sweep_failed_runs_total"][(("kind", "tasks"),)] == 1
    assert samples["retention_last_sweep_finished_timestamp_seconds"][(("kind", "tasks"),)] == pytest.approx(
        run.finished_at.timestamp()
    )
    assert samples["retention_last_sweep_finished_timestamp_seconds"][(("kind", "orphans"),)] == 0


@pytest.mark.django_db
def test_exposition_passes_promtool_check_metrics(client: Any, tmp_path: Path) -> None:
    # given some of every kind of metric
    now = timezone.now()
    queued_task(now - timedelta(seconds=5))
    task_metrics.observe_lateness(0.2)
    task_metrics.observe_runtime("demo.echo", 0.03)
    task_metrics.flush()
    SweepRun.objects.create(kind="results", finished_at=now, purged=1)

    # when /metrics is scraped
    body = client.get("/metrics").content

    # then promtool finds nothing to lint
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    result = subprocess.run([binary, "check", "metrics"], input=body, capture_output=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert b"tasks_dispatch_lateness_seconds_bucket" in body
    assert b'tasks_runtime_seconds_bucket{le="0.05",task_type="demo.echo"}' in body


@pytest.mark.django_db
def test_runtime_is_a_histogram_per_task_type(client: Any, task_types: Any) -> None:
    # given two tasks of a quick type and one of a slow type (0.3 s), run in this process
    import time

    from tasks_app.executor import execute
    from tasks_app.services import submit

    task_types("t.quick", lambda ctx, payload: None)
    task_types("t.slow", lambda ctx, payload: time.sleep(0.3))
    task_metrics.flush()
    for name in ("t.quick", "t.quick", "t.slow"):
        execute(submit(name, {}).id, worker="w")

    # when the observations are added and /metrics is scraped
    task_metrics.flush()
    samples = scrape(client)

    # then each type has its own histogram
    runtime = "tasks_runtime_seconds"
    assert samples[f"{runtime}_count"][(("task_type", "t.quick"),)] == 2
    assert samples[f"{runtime}_bucket"][(("le", "0.25"), ("task_type", "t.quick"))] == 2
    assert samples[f"{runtime}_count"][(("task_type", "t.slow"),)] == 1
    assert samples[f"{runtime}_bucket"][(("le", "0.25"), ("task_type", "t.slow"))] == 0
    assert samples[f"{runtime}_bucket"][(("le", "0.5"), ("task_type", "t.slow"))] == 1
    assert 0.3 <= samples[f"{runtime}_sum"][(("task_type", "t.slow"),)] < 0.5


@pytest.mark.django_db
def test_workers_and_the_backlog_split_are_in_metrics(client: Any) -> None:
    from tasks_app.models import WorkerHeartbeat

    now = timezone.now()
    for hostname, silent in (("a@h", 1), ("b@h", 5), ("c@h", 120)):
        WorkerHeartbeat.objects.create(
            hostname=hostname, pid=1, interval=10, started_at=now, last_beat_at=now - timedelta(seconds=silent)
        )
    queued_task(now - timedelta(seconds=5))
    Task.objects.create(
        task_type="demo.echo", status="scheduled", run_at=now - timedelta(seconds=1), timeout=timedelta(1)
    )

    samples = scrape(client)

    assert samples["tasks_workers_up"][()] == 2
    assert samples["tasks_workers_gone"][()] == 1
    assert samples["tasks_backlog_by_state"][(("state", "queued"),)] == 1
    assert samples["tasks_backlog_by_state"][(("state", "scheduled_due"),)] == 1


@pytest.mark.django_db
def test_a_run_at_long_past_is_not_counted_as_lateness() -> None:
    # given tasks asking to run in the year 2000: one submitted, one row written directly
    ancient = datetime(2000, 1, 1, tzinfo=UTC)
    submitted = submit("demo.echo", {}, run_at=ancient)
    written = queued_task(ancient, created_at=timezone.now())
    task_metrics.flush()
    _, before_total = task_metrics.lateness_totals()

    # when both start
    for task in (submitted, written):
        executor.execute(task.pk, worker="test")
    task_metrics.flush()

    # then the submitted one became due at its submission, and neither adds more than a few seconds
    assert submitted.run_at == submitted.created_at
    assert 0 <= task_metrics.lateness_totals()[1] - before_total < 10


@pytest.mark.django_db
def test_lateness_is_counted_once_however_often_flushed() -> None:
    # given observations in this process (after whatever earlier tests left)
    task_metrics.flush()
    before_buckets, before_total = task_metrics.lateness_totals()
    for seconds in (0.001, 0.3, 7.0, -1.0):
        task_metrics.observe_lateness(seconds)

    # when flushed, and flushed again with nothing new
    task_metrics.flush()
    task_metrics.flush()

    # then each bucket holds the cumulative count, and the sum the total (negative counts as 0)
    buckets, total = task_metrics.lateness_totals()
    by_le = {le: count - dict(before_buckets)[le] for le, count in buckets}
    assert by_le["0.005"] == 2
    assert by_le["0.5"] == 3
    assert by_le["10.0"] == 4
    assert by_le["+Inf"] == 4
    assert total - before_total == pytest.approx(7.301)
    assert MetricTotal.objects.filter(name__startswith="dispatch_lateness_seconds:").count() == len(buckets) + 1


@pytest.mark.django_db
def test_retention_status_shows_the_numbers_metrics_show(client: Any) -> None:
    # given a task overdue for 300 s and a finished tasks sweep
    now = timezone.now()
    finished_task(expires_at=now - timedelta(seconds=300))
    SweepRun.objects.create(kind="tasks", finished_at=now, purged=3)

    # when both read them
    out = io.StringIO()
    call_command("retention_status", stdout=out)
    samples = scrape(client)

    # then they agree
    text = out.getvalue()
    lag = int(text.split("retention lag: ")[1].split(" s")[0])
    assert abs(lag - samples["retention_lag_seconds"][()]) < 5
    assert f"due now: {int(samples['retention_due'][(('reason', 'expires_at'),)])} past expires_at" in text
    assert "total tasks: purged 3" in text
    assert "tasks: succeeded 1" in text


def seed(rows: int) -> None:
    """Seed ``rows`` tasks, results, audit records and sweep runs by SQL, shaped like a busy year."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO tasks_app_task (id, task_type, status, payload, run_at, attempts, max_attempts, timeout,
                created_at, status_changed_at, started_at, finished_at, expires_at, result_expires_at,
                final_status, usage, error, worker, purge_reason, purge_attempts)
            SELECT gen_random_uuid(), 'type.' || (i %% 20),
                CASE WHEN i %% 100 < 60 THEN 'succeeded' WHEN i %% 100 < 80 THEN 'expired'
                     WHEN i %% 100 < 90 THEN 'scheduled' WHEN i %% 100 < 94 THEN 'dead'
                     WHEN i %% 100 < 96 THEN 'failed' WHEN i %% 100 < 97 THEN 'cancelled'
                     WHEN i %% 100 < 98 THEN 'running' WHEN i %% 1000 < 985 THEN 'queued' ELSE 'purging' END,
                NULL,
                CASE WHEN i %% 100 BETWEEN 80 AND 89 THEN now() + i * interval '1 second'
                     ELSE now() - i * interval '1 second' END,
                1, 3, interval '30 seconds', now() - i * interval '1 second', now() - i * interval '1 second',
                now() - i * interval '1 second', now() - i * interval '1 second' + interval '1 second',
                CASE WHEN i %% 100 < 60 THEN now() + interval '30 days' - i * interval '1 second' END,
                CASE WHEN i %% 100 < 80 THEN now() + interval '1 day' - i * interval '1 second' END,
                '', '{}'::jsonb, '', '', '', 0
            FROM generate_series(1, %s) AS i
            """,
            [rows],
        )
        cursor.execute(
            """
            INSERT INTO tasks_app_taskresult (task_id, data, created_at, expires_at)
            SELECT id, '{}'::jsonb, finished_at, result_expires_at FROM tasks_app_task
            WHERE status = 'succeeded' AND result_expires_at > now()
            """
        )
        cursor.execute(
            """
            INSERT INTO retention_sweeprun (kind, started_at, finished_at, claimed, purged, failed, shadow,
                objects_deleted, bytes_freed, missing_objects, errors, pending_parts)
            SELECT (ARRAY['tasks','results','policies','orphans'])[1 + i %% 4], now() - i * interval '10 seconds',
                now() - i * interval '10 seconds', 10, 10, i %% 7 / 6, 0, 30, 3000, 0, '[]'::jsonb, 0
            FROM generate_series(1, %s) AS i
            """,
            [rows // 10],
        )
        cursor.execute(
            """
            INSERT INTO retention_auditrecord (task_id, owner_id, task_type, action, reason, objects_deleted,
                bytes_freed, occurred_at, sweep_run_id)
            SELECT gen_random_uuid(), NULL, 'type.1', CASE WHEN i %% 50 = 0 THEN 'user_erasure' ELSE 'task_purged' END,
                'expires_at', 3, 300, now() - i * interval '1 second',
                CASE WHEN i %% 50 = 0 THEN NULL ELSE (SELECT min(id) FROM retention_sweeprun) END
            FROM generate_series(1, %s) AS i
            """,
            [rows],
        )
        # As autovacuum leaves them: statistics, and a visibility map for index-only scans.
        for table in ("tasks_app_task", "tasks_app_taskresult", "retention_sweeprun", "retention_auditrecord"):
            cursor.execute(f"VACUUM ANALYZE {table}")


# Tables that grow with every task. SweepRun grows by one row per run and is summed whole.
BIG_TABLES = ("tasks_app_task", "tasks_app_taskresult", "retention_auditrecord")


# VACUUM cannot run inside a transaction.
@pytest.mark.django_db(transaction=True)
def test_a_scrape_walks_indexes_with_200k_tasks() -> None:
    # given 200,000 tasks (with results, audit records and sweep runs) and a few overdue ones
    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN is PostgreSQL's")
    seed(200_000)
    now = timezone.now()
    finished_task(expires_at=now - timedelta(minutes=5))

    # when a scrape runs every query of both collectors
    with CaptureQueriesContext(connection) as captured:
        list(task_metrics.TasksCollector(now).collect())
        list(retention_metrics.RetentionCollector(now).collect())

    # then no query scans a big table row by row: each walks an index, and counts stop at COUNT_LIMIT
    plans, scans = [], []
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith("SELECT") or not any(t in sql for t in BIG_TABLES):
                continue
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            plans.append(plan)
            scans += [f"{sql}\n{plan}" for table in BIG_TABLES if f"Seq Scan on {table}" in plan]
    assert not scans, "\n\n".join(scans)
    assert len(plans) >= 20
    assert any("retention_auditrecord_sweep_run_id" in plan for plan in plans), plans
    assert any("task_status_fin_idx" in plan for plan in plans), plans
    assert any("taskresult_expires_idx" in plan for plan in plans), plans
