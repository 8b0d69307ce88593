"""``result_sweep_rows_per_s``: the result-TTL sweep against an audited floor, and django-celery-results for reference.

Every side deletes N expired results among N live ones, seeded with SQL; every task also has
stored objects and some have legal holds, so our per-result checks (holds, result files) find rows
to look at: an ``input`` object for each task with an expired result (not a result file: its result
still goes), a result file for each live one, a hold on every 100th live task and holds on owners
and task types no seeded task has. No hold or result file covers an expired result, so every side
deletes the same N rows.

- **ours**: ``retention_sweep --kind results`` in this process (batches of
  ``RETENTION_RESULT_BATCH_SIZE``, each result re-checked, one audit record each, one transaction a
  batch);
- **audited floor** (judged against): per batch of the same size, one statement
  ``WITH d AS (DELETE … RETURNING …) INSERT INTO <audit copy> …`` walking the same expiry index, into
  a copy of the audit table with the same indexes (``LIKE … INCLUDING ALL``, no triggers), no checks;
- **django-celery-results** ``delete_expired()`` (informational, in the note): one unaudited
  ``DELETE``, in a child process on a throwaway database with that app installed
  (bench/dcr_settings.py).

Both audit tables are emptied before each run. Ours and the floor run ``REPETITIONS`` times,
alternating which goes first (medians and min–max). The longest open transaction of each is
sampled from ``pg_stat_activity`` every ~2 ms and reported as its own row.

``result_sweep_seal_overhead``: ours alone on the same N, with audit sealing off and on
(bench/sealing.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from bench import sealing, seed
from bench.common import ROOT, LongestTransaction, Row, Spread, backend_pid, execute, log, ratio, sized, timed, turns

TASK_TYPE = "bench.results"
DCR_DATABASE = "bench_dcr"
FLOOR_AUDIT = "bench_floor_auditrecord"
REPETITIONS = 3
FLOOR_TARGET = 1.5
# The longest transaction may be at most 10x the floor's (one 5,000-row batch): a sweep that kept one
# transaction open across its batches (20 of them here) fails the row.
TXN_TARGET = 0.1
HOLD_EVERY = 100

FLOOR_BATCH = f"""
WITH d AS (
    DELETE FROM tasks_app_taskresult
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM tasks_app_taskresult
        WHERE expires_at <= %(now)s AND (expires_at, task_id) > (%(at)s::timestamptz, %(id)s::uuid)
        ORDER BY expires_at, task_id LIMIT %(limit)s))
    RETURNING task_id, expires_at
),
audited AS (
    INSERT INTO {FLOOR_AUDIT} (task_id, owner_id, task_type, action, reason, objects_deleted, bytes_freed,
                               occurred_at, sweep_run_id)
    SELECT t.id, t.owner_id, t.task_type, %(action)s, %(reason)s, 0, 0, %(now)s, NULL
    FROM d JOIN tasks_app_task t ON t.id = d.task_id
    RETURNING 1
),
last AS (SELECT expires_at, task_id FROM d ORDER BY expires_at DESC, task_id DESC LIMIT 1)
SELECT (SELECT count(*) FROM audited), (SELECT expires_at FROM last), (SELECT task_id FROM last)
"""  # noqa: S608 - our own table names


def _seed(n: int) -> None:
    seed.reset()
    seed.insert_tasks(
        2 * n,
        TASK_TYPE,
        result_expires_at="CASE WHEN i <= %(expired)s THEN now() - interval '1 hour' ELSE now() + interval '1 day' END",
        params={"expired": n},
    )
    seed.insert_results(TASK_TYPE)
    seed.insert_manifest(TASK_TYPE, 1, kind="input", where="t.result_expires_at <= now()")
    seed.insert_manifest(TASK_TYPE, 1, kind="file", where="t.result_expires_at > now()")
    seed.insert_holds(TASK_TYPE, where="result_expires_at > now()", every=HOLD_EVERY)
    seed.analyze()


def _reset_audit() -> None:
    """Empty the product's audit table. It is append-only: outside a test database (migration 0013) only
    its owner may, by turning the TRUNCATE trigger off for this transaction, as the bench's user can."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE retention_auditrecord DISABLE TRIGGER retention_auditrecord_no_truncate")
        cursor.execute("TRUNCATE retention_auditrecord")
        cursor.execute("ALTER TABLE retention_auditrecord ENABLE TRIGGER retention_auditrecord_no_truncate")


def _left() -> int:
    from tasks_app.models import TaskResult

    return TaskResult.objects.count()


def run_ours(n: int, around: Callable[[], AbstractContextManager[object]] = nullcontext) -> tuple[float, float]:
    """(seconds, longest transaction in seconds) of the results sweep over ``n`` expired results
    (``around`` wraps the timed region)."""
    from django.utils import timezone

    from retention.models import AuditRecord
    from retention.sweeping import sweeps

    _seed(n)
    _reset_audit()
    watcher = LongestTransaction({backend_pid()})
    watcher.start()
    now = timezone.now()
    with around(), timed() as elapsed:
        run = sweeps.sweep("results", now, fanout=sweeps.InProcess(now))
    longest = watcher.stop()
    assert run is not None
    left, audited = _left(), AuditRecord.objects.filter(action="result_purged").count()
    if run.purged != n or left != n or audited != n:
        raise RuntimeError(
            f"results sweep purged {run.purged} of {n}, audited {audited}; {left} left (errors {run.errors[:3]})"
        )
    return elapsed[0], longest


def run_floor(n: int) -> tuple[float, float]:
    """(seconds, longest transaction in seconds) of the audited floor over ``n`` expired results."""
    from django.db import connection
    from django.utils import timezone

    from retention import conf
    from retention.choices import AuditAction, Reason

    _seed(n)
    execute(f"DROP TABLE IF EXISTS {FLOOR_AUDIT}")
    execute(f"CREATE TABLE {FLOOR_AUDIT} (LIKE retention_auditrecord INCLUDING ALL)")
    limit = conf.result_batch_size()
    params: dict[str, Any] = {
        "now": timezone.now(),
        "at": "-infinity",
        "id": "00000000-0000-0000-0000-000000000000",
        "limit": limit,
        "action": AuditAction.RESULT_PURGED,
        "reason": Reason.RESULT_TTL,
    }
    watcher = LongestTransaction({backend_pid()})
    watcher.start()
    audited = 0
    with timed() as elapsed, connection.cursor() as cursor:
        while True:
            # Autocommit: each batch is its own transaction, as each of ours is.
            cursor.execute(FLOOR_BATCH, params)
            count, last_at, last_id = cursor.fetchone()
            audited += count
            if last_id is None or count < limit:
                break
            params["at"], params["id"] = last_at, str(last_id)
    longest = watcher.stop()
    left = _left()
    if audited != n or left != n:
        raise RuntimeError(f"audited floor audited {audited} of {n}; {left} results left")
    execute(f"DROP TABLE {FLOOR_AUDIT}")
    return elapsed[0], longest


def _create_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DCR_DATABASE]).fetchone():
            conn.execute(f"CREATE DATABASE {DCR_DATABASE}")


def run_baseline(n: int) -> dict[str, float]:
    _create_database()
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.dcr_baseline", str(n)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.dcr_settings"},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows() -> list[Row]:
    n = sized(20_000, 100_000)
    rates: dict[str, list[float]] = {"ours": [], "floor": []}
    longest: dict[str, list[float]] = {"ours": [], "floor": []}
    for first, second in turns(REPETITIONS, "ours", "floor"):
        for side in (first, second):
            log(f"results: {side}, {n} expired among {n} live")
            seconds, txn = run_ours(n) if side == "ours" else run_floor(n)
            rates[side].append(n / seconds)
            longest[side].append(txn * 1000)
    seed.reset()
    seal_row = seal_overhead_row(n)
    log(f"results: django-celery-results delete_expired(), {n} expired among {n} live")
    dcr = run_baseline(n)
    dcr_rate = n / dcr["seconds"]
    ours, floor = Spread.of(rates["ours"]), Spread.of(rates["floor"])
    ours_ms, floor_ms = Spread.of(longest["ours"]), Spread.of(longest["floor"])
    data = f"{n:,} expired among {n:,} live, files and holds seeded"
    return [
        Row(
            "result_sweep_rows_per_s",
            ours.median,
            "rows/s",
            "audited floor: DELETE … RETURNING + INSERT audit, 1 statement/batch",
            floor.median,
            ratio(ours.median, floor.median),
            f"{data}; median of {REPETITIONS}, alternating; for reference django-celery-results "
            f"delete_expired() (one unaudited DELETE): {dcr_rate:,.0f} rows/s",
            target=FLOOR_TARGET,
            spread=ours,
            baseline_spread=floor,
        ),
        Row(
            "result_sweep_longest_txn_ms",
            ours_ms.median,
            "ms",
            "audited floor (one batch per transaction)",
            floor_ms.median,
            ratio(ours_ms.median, floor_ms.median, higher_is_better=False),
            f"longest open transaction (pg_stat_activity every ~2 ms), median of {REPETITIONS}; "
            f"django-celery-results: {dcr['longest_transaction_s'] * 1000:.0f} ms (all in one); lower is better",
            target=TXN_TARGET,
            spread=ours_ms,
            baseline_spread=floor_ms,
        ),
        seal_row,
    ]


def seal_overhead_row(n: int) -> Row:
    """Ours with audit sealing off against on (bench/sealing.py), alternated, on the same N."""
    rates: dict[bool, list[float]] = {False: [], True: []}
    seals: list[sealing.Seals] = []
    with sealing.restored():
        for first, second in turns(sealing.REPETITIONS, False, True):
            for on in (first, second):
                log(f"results: ours, sealing {'on' if on else 'off'}, {n} expired among {n} live")
                side = sealing.Side(on)
                seconds, _ = run_ours(n, around=side.during)
                rates[on].append(n / seconds)
                if side.seals is not None:
                    seals.append(side.seals)
                log(f"  {rates[on][-1]:,.0f} rows/s; {side.seals or 'no sealer'}")
    seed.reset()
    data = f"{n:,} expired among {n:,} live, as result_sweep_rows_per_s"
    return sealing.overhead_row("result_sweep_seal_overhead", "rows/s", rates[False], rates[True], seals, data)
