"""``purge_tasks_per_s`` and ``purge_vs_naive``: the product's task purge against the floor and a naive loop.

Each side gets the same freshly seeded data: N expired tasks, each with a result row and 3
manifest rows, one of whose objects really exists in the bucket (the other two keys are
missing, which still costs their place in a ``DeleteObjects`` call). Every side is warmed up the
same way before it is timed (the boto3 client built, the bucket's versioning read).

- **ours**: ``retention_sweep --kind tasks`` in this process (the ``tasks`` sweep with the
  in-process fan-out: claim in batches, delete the objects, audit, tombstone), one batch at a time;
- **floor**: per batch of ``RETENTION_BATCH_SIZE`` tasks, ``DeleteObjects`` of their keys and one
  transaction of three raw ``DELETE`` statements (no claim, no audit, no tombstone), one batch at a
  time and with the product's ``DeleteObjects`` mode (``Quiet`` false, the reply's errors read);
- **naive**: ``storage.delete(key)`` + ``Model.delete()`` per object, then ``task.delete()``,
  against ours on the same smaller N.

Ours and the floor run ``REPETITIONS`` times, alternating which goes first; the row shows the
medians (judged: ours ÷ floor ≥ ``FLOOR_TARGET``) and each side's min–max. N is 10,000 (1,000 under
BENCH_QUICK); the naive comparison 2,000 (200).

``purge_seal_overhead``: ours alone on the floor row's N, with audit sealing off and on
(bench/sealing.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from bench import sealing, seed
from bench.common import Row, Spread, log, ratio, sized, timed, turns

OURS = "bench.purge.ours"
FLOOR = "bench.purge.floor"
NAIVE = "bench.purge.naive"
OBJECTS_PER_TASK = 3
REPETITIONS = 3
FLOOR_TARGET = 0.9
NAIVE_TARGET = 20.0
# The product's DeleteObjects mode (retention/storage/objects.py asks for a verbose reply).
QUIET = False


def _prepare(n: int, task_type: str) -> None:
    seed.reset()
    seed.insert_tasks(n, task_type, expires_at="now() - interval '1 hour'")
    seed.insert_results(task_type)
    seed.insert_manifest(task_type, OBJECTS_PER_TASK)
    seed.analyze()
    seed.upload(seed.keys(task_type, where="o.key LIKE '%%/1.bin'"))


def _check(task_type: str, what: str) -> None:
    left = seed.objects_left()
    if left:
        raise RuntimeError(f"{what}: {left} objects left in the bucket")
    if seed.count(task_type, "status <> 'expired'"):
        raise RuntimeError(f"{what}: tasks left unpurged")


def run_ours(n: int, around: Callable[[], AbstractContextManager[object]] = nullcontext) -> float:
    """Seconds the in-process tasks sweep takes to purge ``n`` expired tasks (``around`` wraps the timed region)."""
    from django.utils import timezone

    from retention.models import AuditRecord
    from retention.sweeping import sweeps

    _prepare(n, OURS)
    _warm_up()
    audits_before = AuditRecord.objects.count()
    now = timezone.now()
    with around(), timed() as elapsed:
        run = sweeps.sweep("tasks", now, fanout=sweeps.InProcess(now))
    assert run is not None
    if run.purged != n or AuditRecord.objects.count() - audits_before != n:
        raise RuntimeError(f"ours purged {run.purged} of {n} (errors: {run.errors[:3]})")
    _check(OURS, "ours")
    return elapsed[0]


def _warm_up() -> None:
    """Steady state, as in a long-running worker: the boto3 client built and the bucket's versioning
    read (once a minute per process), so neither side pays a one-off start-up cost in its timing."""
    from django.core.files.storage import default_storage

    from retention.storage import bucket

    client = default_storage.bucket.meta.client  # type: ignore[attr-defined]
    bucket.versioning(client, default_storage.bucket_name)  # type: ignore[attr-defined]


def run_floor(n: int) -> float:
    """Seconds batched raw SQL ``DELETE`` + ``DeleteObjects`` of the same rows and keys take."""
    from django.core.files.storage import default_storage
    from django.db import connection, transaction

    from retention import conf
    from retention.storage import objects
    from retention.storage.bucket import MISSING_CODES

    _prepare(n, FLOOR)
    _warm_up()
    client = default_storage.bucket.meta.client  # type: ignore[attr-defined]
    bucket = default_storage.bucket_name  # type: ignore[attr-defined]
    batch = conf.batch_size()
    with timed() as elapsed:
        after = "00000000-0000-0000-0000-000000000000"
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM tasks_app_task WHERE task_type = %s AND expires_at <= now() AND id > %s "
                    "ORDER BY id LIMIT %s",
                    [FLOOR, after, batch],
                )
                ids = [row[0] for row in cursor.fetchall()]
                if not ids:
                    break
                cursor.execute("SELECT key FROM tasks_app_storedobject WHERE task_id = ANY(%s)", [ids])
                keys = [row[0] for row in cursor.fetchall()]
            for chunk in objects.batched(keys, objects.DELETE_BATCH):
                reply = client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": QUIET}
                )
                failed = [e for e in reply.get("Errors", []) if e.get("Code") not in MISSING_CODES]
                if failed:
                    raise RuntimeError(f"floor: DeleteObjects refused {failed[:3]}")
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("DELETE FROM tasks_app_storedobject WHERE task_id = ANY(%s)", [ids])
                cursor.execute("DELETE FROM tasks_app_taskresult WHERE task_id = ANY(%s)", [ids])
                cursor.execute("DELETE FROM tasks_app_task WHERE id = ANY(%s)", [ids])
            after = str(ids[-1])
            if len(ids) < batch:
                break
    if seed.count(FLOOR) or seed.objects_left():
        raise RuntimeError("floor left rows or objects behind")
    return elapsed[0]


def run_naive(n: int) -> float:
    """Seconds a loop of ``storage.delete(key)`` + ``Model.delete()`` takes for ``n`` tasks."""
    from django.core.files.storage import default_storage
    from django.utils import timezone

    from tasks_app.models import Task

    _prepare(n, NAIVE)
    _warm_up()
    with timed() as elapsed:
        for task in Task.objects.filter(task_type=NAIVE, expires_at__lte=timezone.now()).order_by("pk"):
            for stored in task.stored_objects.all():
                default_storage.delete(stored.key)
                stored.delete()
            task.delete()
    if seed.count(NAIVE) or seed.objects_left():
        raise RuntimeError("naive loop left rows or objects behind")
    return elapsed[0]


def floor_rows(*, name: str = "purge_tasks_per_s", note: str = "") -> list[Row]:
    """Ours against the floor, alternated ``REPETITIONS`` times."""
    n = sized(1000, 10_000)
    rates: dict[str, list[float]] = {"ours": [], "floor": []}
    for first, second in turns(REPETITIONS, "ours", "floor"):
        for side in (first, second):
            log(f"purge: {side}, {n} expired tasks × {OBJECTS_PER_TASK} keys")
            rates[side].append(n / (run_ours(n) if side == "ours" else run_floor(n)))
    seed.reset()
    ours, floor = Spread.of(rates["ours"]), Spread.of(rates["floor"])
    return [
        Row(
            name,
            ours.median,
            "tasks/s",
            "floor: batched SQL DELETE + DeleteObjects, same thread count and Quiet mode",
            floor.median,
            ratio(ours.median, floor.median),
            f"N={n}, 3 keys/task (1 real object), result row each; median of {REPETITIONS}, alternating; "
            f"both one batch at a time, DeleteObjects Quiet={str(QUIET).lower()}{note}",
            target=FLOOR_TARGET,
            spread=ours,
            baseline_spread=floor,
        )
    ]


def naive_rows() -> list[Row]:
    """Ours against the naive loop, on the same N."""
    n = sized(200, 2000)
    log(f"purge: naive loop, {n} tasks")
    naive = n / run_naive(n)
    log(f"purge: ours, {n} tasks (the naive loop's N)")
    ours = n / run_ours(n)
    seed.reset()
    return [
        Row(
            "purge_vs_naive",
            ours,
            "tasks/s",
            "Model.delete() + storage.delete() per object",
            naive,
            ratio(ours, naive),
            f"N={n} on both sides, same warm-up",
            target=NAIVE_TARGET,
        )
    ]


def seal_rows() -> list[Row]:
    """Ours with audit sealing off against on (bench/sealing.py), alternated, same N as the floor row."""
    n = sized(1000, 10_000)
    rates: dict[bool, list[float]] = {False: [], True: []}
    seals: list[sealing.Seals] = []
    with sealing.restored():
        for first, second in turns(sealing.REPETITIONS, False, True):
            for on in (first, second):
                log(f"purge: ours, sealing {'on' if on else 'off'}, {n} expired tasks")
                side = sealing.Side(on)
                rates[on].append(n / run_ours(n, around=side.during))
                if side.seals is not None:
                    seals.append(side.seals)
                log(f"  {rates[on][-1]:,.0f} tasks/s; {side.seals or 'no sealer'}")
    seed.reset()
    data = f"N={n}, 3 keys/task (1 real object), as purge_tasks_per_s"
    return [sealing.overhead_row("purge_seal_overhead", "tasks/s", rates[False], rates[True], seals, data)]


def rows() -> list[Row]:
    return floor_rows() + naive_rows() + seal_rows()
