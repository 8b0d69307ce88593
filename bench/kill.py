"""``delayed_after_kill``: 100 delayed tasks in the worker when it is SIGKILLed; seconds until all 100 have
run, ours (``submit(run_at=…)``) against Celery ``countdown=``.

Both sets are due ``DELAY_S`` after submission. The dispatcher claims our rows only
``TASKS_DISPATCH_HORIZON`` (2 s) before their ``run_at`` and publishes them with that ETA, so the
kill waits until the worker holds every message of both sets (Redis ``unacked``, read by task name),
at the latest until ``KILL_BEFORE_S`` before the due time. The worker's process group is then
SIGKILLed and a new worker started at once; every body records when it started.

Each side's value is the time from the kill until the last of its 100 started. A side with any
task not started ``WINDOW_S`` after the kill has no time: ours then fails the row; Celery's column
says how many of its tasks ran (its held messages stay unacknowledged in Redis until the
visibility timeout, 2 h) and no ratio is shown. The row also fails when fewer than 100 of ours
were in the worker at the kill: recovery was then not exercised.

``start`` returns a ``KillRun`` whose ``rows()`` may be called later (the window is read from the
recorded start times), so the caller can use the rest of the window for other work once ours have
all run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from bench.common import FAIL, PASS, Row, aware, judge, log

COUNT = 100
DELAY_S = 8.0
KILL_BEFORE_S = 0.25  # kill at the latest this long before the due time
WINDOW_S = 120.0  # ours re-run once TASKS_QUEUED_TIMEOUT (60 s) after their claim passes
OURS_TASK = "tasks_app.run_task"
CELERY_TASK = "bench.stamp"


@dataclass(frozen=True)
class Finish:
    """How one side's tasks came back after the kill."""

    ran: int  # of COUNT, started before the window closed
    seconds: float | None  # kill → the last of COUNT started; None when not all of them did


def finish(starts: list[float], killed_at: float, window: float = WINDOW_S) -> Finish:
    """Summarise one side from its tasks' start times (epoch seconds)."""
    ran = [started for started in starts if started <= killed_at + window]
    if len(ran) < COUNT:
        return Finish(len(ran), None)
    return Finish(len(ran), max(ran) - killed_at)


def row(ours: Finish, celery: Finish, held_ours: int, window: float = WINDOW_S) -> Row:
    """The row: ours fails when not all of ours ran in the window, when Celery's came back sooner, or
    when ours were not all in the worker at the kill (recovery not exercised)."""
    notes = [f"worker SIGKILLed holding {held_ours} of our {COUNT} messages; restarted at once"]
    baseline = "Celery countdown=, same worker"
    if celery.seconds is None:
        baseline += f" ({celery.ran} of {COUNT} ran in {window:.0f} s)"
    if ours.seconds is None:
        notes.append(f"ours: only {ours.ran} of {COUNT} ran within {window:.0f} s")
        verdict = FAIL
        ratio = None
    elif celery.seconds is None:
        ratio = None  # Celery never finished: no ratio, ours judged on finishing at all
        verdict = PASS
    else:
        ratio = celery.seconds / ours.seconds if ours.seconds else None
        verdict = judge(ratio, 1.0)
    if held_ours < COUNT:
        notes.append("not all of ours were in the worker: recovery not exercised")
        verdict = FAIL
    notes.append(f"window {window:.0f} s; ratio = Celery's time ÷ ours (both must finish)")
    return Row(
        "delayed_after_kill",
        ours.seconds,
        "s until all ran",
        baseline,
        celery.seconds,
        ratio,
        "; ".join(notes),
        target=1.0,
        verdict=verdict,
    )


@dataclass
class KillRun:
    run_ours: str
    run_celery: str
    killed_at: float
    held: dict[str, int]

    def _starts(self, run: str) -> list[float]:
        from bench.celery_tasks import starts

        return [body for _, body in starts(run).values()]

    def wait_for_ours(self) -> None:
        """Until all of ours ran or the window closed."""
        from bench.celery_tasks import recorded

        deadline = self.killed_at + WINDOW_S
        while time.time() < deadline and recorded(self.run_ours) < COUNT:
            time.sleep(0.5)

    def wait_for_window(self) -> None:
        time.sleep(max(0.0, self.killed_at + WINDOW_S - time.time()) + 1)

    def rows(self) -> list[Row]:
        ours = finish(self._starts(self.run_ours), self.killed_at)
        celery = finish(self._starts(self.run_celery), self.killed_at)
        return [row(ours, celery, self.held.get(OURS_TASK, 0))]


def held() -> dict[str, int]:
    """Messages delivered to a worker and not yet acknowledged, by task name."""
    from bench.celery_tasks import client

    counts: dict[str, int] = {}
    for raw in client().hvals("unacked"):
        name = json.loads(raw)[0].get("headers", {}).get("task", "?")
        counts[name] = counts.get(name, 0) + 1
    return counts


def start(fleet, worker: str) -> tuple[KillRun, str]:  # type: ignore[no-untyped-def]
    """Submit both sets, SIGKILL ``worker`` once it holds both, start a new one; return the run and its name."""
    from bench.celery_tasks import stamp
    from tasks_app.services import submit

    stamp_run, record_run = f"kill-celery-{time.time_ns()}", f"kill-ours-{time.time_ns()}"
    before = held()
    due = time.time() + DELAY_S
    for seq in range(COUNT):
        submit("bench.record", {"run": record_run, "seq": seq}, run_at=aware(due))
    for seq in range(COUNT):
        stamp.apply_async(args=[stamp_run, seq, due], countdown=max(due - time.time(), 0.1))

    def new() -> dict[str, int]:
        return {name: count - before.get(name, 0) for name, count in held().items()}

    # Ours reach the worker only once the dispatcher claims them (TASKS_DISPATCH_HORIZON ahead).
    while time.time() < due - KILL_BEFORE_S:
        now_held = new()
        if now_held.get(OURS_TASK, 0) >= COUNT and now_held.get(CELERY_TASK, 0) >= COUNT:
            break
        time.sleep(0.05)
    at_kill = new()
    log(f"kill: SIGKILL {worker} {due - time.time():.2f} s before the due time, holding {at_kill}")
    killed_at = time.time()
    fleet.kill(worker)
    new_worker = fleet.start("worker")
    return KillRun(record_run, stamp_run, killed_at, at_kill), new_worker
