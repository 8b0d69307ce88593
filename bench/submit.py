"""``submit_per_s`` and ``submit_many_per_s``: submitting against Celery ``.delay()``, no worker running.

- ``submit_per_s``: a loop of ``submit()`` against a loop of ``.delay()`` of the same payload;
- ``submit_many_per_s``: ``submit_many()`` of ``MANY`` tasks per call against a loop of the same
  number of ``.delay()`` (Celery has no bulk publish that writes anything durable first).

Every side publishes one message per due task to the same Redis (ours after its rows commit).
Each row is measured ``REPETITIONS`` times, alternating which side goes first; the row shows the
medians and each side's min–max. The queue and the rows are emptied afterwards so nothing of
this runs later.
"""

from __future__ import annotations

from bench import seed
from bench.common import Row, Spread, log, ratio, sized, timed, turns

REPETITIONS = 3
MANY = 1000
SUBMIT_TARGET = 0.6
MANY_TARGET = 3.0


def _ours(n: int, run: str) -> float:
    from tasks_app.services import submit

    with timed() as elapsed:
        for seq in range(n):
            submit("bench.record", {"run": run, "seq": seq})
    return n / elapsed[0]


def _ours_many(n: int, run: str) -> float:
    from tasks_app.services import submit_many

    requests = [{"task_type": "bench.record", "payload": {"run": run, "seq": seq}} for seq in range(n)]
    with timed() as elapsed:
        for start in range(0, n, MANY):
            submit_many(requests[start : start + MANY])
    return n / elapsed[0]


def _celery(n: int, run: str) -> float:
    from bench.celery_tasks import stamp

    with timed() as elapsed:
        for seq in range(n):
            stamp.delay(run, seq, 0.0)
    return n / elapsed[0]


def _alternated(ours_side, n: int, name: str) -> tuple[Spread, Spread]:  # type: ignore[no-untyped-def]
    """Medians and ranges of ``REPETITIONS`` alternating runs of ``ours_side`` and ``.delay()``."""
    ours, celery = [], []
    for round_, order in enumerate(turns(REPETITIONS, "ours", "celery")):
        for side in order:
            run = f"{name}-{round_}"
            if side == "ours":
                ours.append(ours_side(n, run))
            else:
                celery.append(_celery(n, run))
    return Spread.of(ours), Spread.of(celery)


def _row(name: str, mine: Spread, theirs: Spread, baseline: str, note: str, target: float) -> Row:
    return Row(
        name,
        mine.median,
        "tasks/s",
        baseline,
        theirs.median,
        ratio(mine.median, theirs.median),
        f"{note}; median of {REPETITIONS}, alternating who goes first",
        target=target,
        spread=mine,
        baseline_spread=theirs,
    )


def rows() -> list[Row]:
    from project.celery import app

    n = sized(300, 2000)
    many = sized(2000, 10000)
    log(f"submit: {n} submit() vs {n} .delay(); {many} in submit_many() calls of {MANY} vs {many} .delay()")
    _ours(20, "submit-warm-up")
    _ours_many(20, "submit-warm-up")
    _celery(20, "submit-warm-up")
    single = _alternated(_ours, n, "submit")
    app.control.purge()
    seed.reset()
    bulk = _alternated(_ours_many, many, "submit-many")
    app.control.purge()
    seed.reset()
    return [
        _row("submit_per_s", *single, "Celery .delay()", f"{n} each, run now", SUBMIT_TARGET),
        _row(
            "submit_many_per_s",
            *bulk,
            "a loop of Celery .delay()",
            f"{many} each, run now; ours in calls of {MANY}",
            MANY_TARGET,
        ),
    ]
