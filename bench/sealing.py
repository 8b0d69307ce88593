"""``purge_seal_overhead`` and ``result_sweep_seal_overhead``: our deletion path with audit sealing off and on.

Issue 21: sealing cost stays off the deletion path. The purge and the result sweep (ours only, the
same code and N as their rows) run ``REPETITIONS`` times each way, alternating which goes first:

- **off** (the baseline): the statement trigger ``retention_auditrecord_seal_fence`` disabled, so
  no audit insert takes the sealing fence, and the run-end seal task not sent (``_seal_soon`` a
  no-op); nothing seals;
- **on**: the trigger as the migration leaves it (``ENABLE ALWAYS``), the run-end seal task sent
  as in production, and a sealer running ``seals.seal(now)`` every ``SEAL_EVERY_S`` in its own
  process (as the seal task runs in a worker process, not in the sweeping one) for the whole
  timed region. That is 300 times beat's 60 s cadence, so even the quick sizes' shortest regions
  (~0.3 s) meet a seal taking the fence exclusively while the sweep holds it shared.

Before the timed region the sealer is warmed (its boto3 client built) and seals what the previous
"off" run left unsealed; after it, it seals once more (the run-end seal, which a worker runs after
the run committed): neither is timed, the last one's duration is in the note, and so is whether
every record ended up sealed. The trigger's state is read first and restored in a ``finally``,
whatever happens. A row fails when the "on" median is more than 10 % slower than the "off" one, or
when a repetition had no seal during its timed region (sealing not exercised).

``python -m bench.sealing EVERY`` is the sealer: it prints ``ready`` after its first seal, seals every
EVERY seconds until a line (or EOF) on stdin, seals once more and prints a JSON summary.
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from bench.common import FAIL, ROOT, Row, Spread, execute, ratio, scalar, sized

TABLE = "retention_auditrecord"
TRIGGER = "retention_auditrecord_seal_fence"
SEAL_EVERY_S = 0.2
TARGET = 0.9
REPETITIONS = sized(5, 3)
BASELINE = "sealing off: fence trigger disabled, no seal task"
# pg_trigger.tgenabled → the ALTER TABLE clause that restores it.
ENABLE = {"A": "ENABLE ALWAYS", "O": "ENABLE", "R": "ENABLE REPLICA", "D": "DISABLE"}


def trigger_state() -> str:
    state = scalar("SELECT tgenabled FROM pg_trigger WHERE tgname = %s AND tgrelid = %s::regclass", [TRIGGER, TABLE])
    if state is None:
        raise RuntimeError(f"trigger {TRIGGER} not found on {TABLE} (migration 0012 not applied?)")
    return str(state)


def set_trigger(state: str) -> None:
    execute(f"ALTER TABLE {TABLE} {ENABLE[state]} TRIGGER {TRIGGER}")


@contextmanager
def restored() -> Iterator[str]:
    """Yield the trigger's state; put it back as it was on the way out, whatever happened."""
    state = trigger_state()
    try:
        yield state
    finally:
        set_trigger(state)


@dataclass
class Seals:
    """What the sealer did during one "on" run's timed region."""

    attempts: int = 0  # seal() calls that overlapped the region (each takes the fence exclusively)
    made: int = 0  # of which made a seal
    records: int = 0  # records those seals covered
    errors: list[str] = field(default_factory=list)  # e.g. lock timeouts (the next tick tries again)
    final_ms: float = 0.0  # the run-end seal, after the region (not timed)
    unsealed: int = 0  # records above the last seal once the run-end seal is done


def in_window(attempts: list[list[Any]], start: float, end: float) -> Seals:
    """The sealer's ``[started, ended, records or None, error]`` attempts that overlapped ``[start, end]``."""
    seals = Seals()
    for began, ended, records, error in attempts:
        if began >= end or ended <= start:
            continue
        seals.attempts += 1
        if error:
            seals.errors.append(error)
        elif records:
            seals.made += 1
            seals.records += records
    return seals


class Side:
    """One run's sealing, ``off`` or ``on``; ``during`` wraps the timed region (ours: ``run_ours(n, around=…)``)."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.seals: Seals | None = None

    @contextmanager
    def during(self) -> Iterator[None]:
        with restored() as state:
            if self.on:
                if state == "D":
                    raise RuntimeError(f"{TRIGGER} is disabled: sealing 'on' would measure nothing")
                with self._sealer():
                    yield
            else:
                set_trigger("D")
                with mock.patch("retention.sweeping.runs._seal_soon", return_value=None):
                    yield

    @contextmanager
    def _sealer(self) -> Iterator[None]:
        child = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "bench.sealing", str(SEAL_EVERY_S)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            line = child.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"sealer did not start: {line!r} (exit {child.poll()})")
            start = time.monotonic()
            yield
            end = time.monotonic()
            out, _ = child.communicate("stop\n", timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        summary = json.loads(out.strip().splitlines()[-1])
        self.seals = in_window(summary["attempts"], start, end)
        began, ended, _, error = summary["final"]
        if error:
            self.seals.errors.append(f"run-end seal: {error}")
        self.seals.final_ms = (ended - began) * 1000
        self.seals.unsealed = int(
            scalar(
                f"SELECT count(*) FROM {TABLE} WHERE id > "  # noqa: S608 - our own table name
                "(SELECT coalesce(max(last_record_id), 0) FROM retention_auditseal)"
            )
        )


def overhead_row(name: str, unit: str, off: list[float], on: list[float], seals: list[Seals], data: str) -> Row:
    """Rates with sealing on against off (higher is better); fails below ``TARGET``, or if a run met no seal."""
    off_rates, on_rates = Spread.of(off), Spread.of(on)
    missed = sum(1 for s in seals if s.attempts == 0)
    errors = [e for s in seals for e in s.errors]
    note = (
        f"{data}; ours only, sealing off vs on, median of {len(on)} each, alternating; on: a sealer every "
        f"{SEAL_EVERY_S:g} s in its own process, {sum(s.attempts for s in seals)} fence takes and "
        f"{sum(s.made for s in seals)} seals ({sum(s.records for s in seals):,} records) during the timed runs; "
        f"run-end seal not timed, median {statistics.median(s.final_ms for s in seals) if seals else 0:.0f} ms; "
        f"unsealed after it: {sum(s.unsealed for s in seals)}"
    )
    if errors:
        note += f"; sealer errors: {len(errors)} (first: {errors[0]})"
    if missed or len(seals) != len(on):
        note += f"; sealing not exercised in {missed or len(on) - len(seals)} run(s)"
    return Row(
        name,
        on_rates.median,
        unit,
        BASELINE,
        off_rates.median,
        ratio(on_rates.median, off_rates.median),
        note,
        target=TARGET,
        spread=on_rates,
        baseline_spread=off_rates,
        verdict=FAIL if missed or len(seals) != len(on) else "",
    )


# --- the sealer process -------------------------------------------------------------------------


def main() -> int:
    from bench.common import setup_django

    every = float(sys.argv[1])
    setup_django()
    from django.utils import timezone

    from retention.audit import seals
    from retention.storage import objects

    attempts: list[list[Any]] = []

    def once() -> list[Any]:
        began = time.monotonic()
        try:
            made = seals.seal(timezone.now(), reason="bench")
        except Exception as error:  # noqa: BLE001 - a lock timeout: the next tick tries again
            return [began, time.monotonic(), None, f"{type(error).__name__}: {error}"[:200]]
        return [began, time.monotonic(), made.record_count if made else 0, ""]

    # Warm, as a long-running worker is: the boto3 client built and connected (a seal asks the bucket
    # whether it has Object Lock), and what the previous "off" run left unsealed sealed, before the region.
    objects.object_lock_enabled()
    once()
    print("ready", flush=True)
    due = time.monotonic() + every
    while not select.select([sys.stdin], [], [], max(0.0, due - time.monotonic()))[0]:
        attempts.append(once())
        due = max(due + every, time.monotonic())
    final = once()
    print(json.dumps({"attempts": attempts, "final": final}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
