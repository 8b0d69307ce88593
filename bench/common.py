"""What every benchmark module shares: sizes, Django set-up, timing, SQL, and the result rows."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH_IMPORTS = "bench.celery_tasks"
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


def sized(quick: int, full: int) -> int:
    """``quick`` under BENCH_QUICK=1, else ``full``."""
    return quick if QUICK else full


PASS, FAIL, INFO = "pass", "FAIL", "info"


def judge(ratio: float | None, target: float | None) -> str:
    """``pass`` when ``ratio`` reaches ``target``; ``FAIL`` when it does not or there is no ratio to judge;
    ``info`` for a row without a target."""
    if target is None:
        return INFO
    if ratio is None:
        return FAIL
    return PASS if ratio >= target else FAIL


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("no measurements")
        return cls(statistics.median(values), min(values), max(values))

    def text(self) -> str:
        return f"{_number(self.low)}–{_number(self.high)}"


@dataclass
class Row:
    """One line of the table and of the JSON: ``ratio`` is oriented so that higher is better.

    ``value`` is None when ours produced no number (a run that never finished); ``target`` is the
    least ratio that passes (None: the row informs, it is not judged); ``verdict`` is computed from
    them unless a row passes its own (a row judged on more than its ratio).
    """

    name: str
    value: float | None
    unit: str
    baseline: str
    baseline_value: float | None
    ratio: float | None
    note: str = ""
    target: float | None = None
    spread: Spread | None = None
    baseline_spread: Spread | None = None
    verdict: str = ""

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = judge(self.ratio, self.target)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("note")
        return data


def ratio(ours: float | None, theirs: float | None, *, higher_is_better: bool = True) -> float | None:
    """ours ÷ theirs when more is better, theirs ÷ ours when less is better (None if undefined)."""
    if ours is None or theirs is None:
        return None
    if higher_is_better:
        return ours / theirs if theirs else None
    return theirs / ours if ours else None


T = TypeVar("T")


def turns(repetitions: int, first: T, second: T) -> list[tuple[T, T]]:
    """The order of each repetition, alternating who goes first: (a, b), (b, a), (a, b), …"""
    return [(first, second) if i % 2 == 0 else (second, first) for i in range(repetitions)]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def aware(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def log(message: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --- Django and the database ------------------------------------------------------------------


def setup_django() -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit(
            "The benchmarks run against real PostgreSQL, Redis and S3: run `make bench`, or "
            "`python -m tests.real_services -- python -m bench`."
        )
    imports = [m for m in os.environ.get("TASKS_IMPORTS", "").split(",") if m.strip()]
    if BENCH_IMPORTS not in imports:
        imports.append(BENCH_IMPORTS)
    os.environ["TASKS_IMPORTS"] = ",".join(imports)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    # The product logs at LOG_LEVEL (INFO by default) here too, as in production, so its logging
    # costs what it costs there; its lines go to a file so stderr keeps the bench's progress.
    path = product_log_path()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(path.open("a"))


def product_log_path() -> Path:
    """Where the product's log lines go in this run (the services' folder, else the temporary one)."""
    folder = Path(os.environ.get("TEST_SERVICES_DIR") or tempfile.gettempdir())
    return folder / "bench-product.log"


def migrate() -> None:
    subprocess.run(  # noqa: S603 - our own manage.py
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True
    )


def execute(statement: str, params: Any = None) -> int:
    """Run one SQL statement on Django's connection (autocommit); return its row count."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


def scalar(statement: str, params: Any = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    return row[0] if row else None


def backend_pid() -> int:
    return int(scalar("SELECT pg_backend_pid()"))


class LongestTransaction(threading.Thread):
    """Sample ``pg_stat_activity`` every few ms on its own connection; keep the longest open transaction
    of the watched backends (by pid, or all but this watcher's when none given)."""

    def __init__(self, pids: set[int] | None = None, interval: float = 0.002) -> None:
        super().__init__(daemon=True, name="longest-transaction")
        self.pids = pids
        self.interval = interval
        self.longest_s = 0.0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psycopg

        url = os.environ["DATABASE_URL"]
        if self.pids:
            # pg_stat_activity is cluster-wide: watch the given backends in any database.
            query, params = "pid = ANY(%s)", [sorted(self.pids)]
        else:
            query, params = "datname = current_database() AND backend_type = 'client backend'", []
        sql = (
            "SELECT max(extract(epoch FROM clock_timestamp() - xact_start)) FROM pg_stat_activity "  # noqa: S608
            f"WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND {query}"
        )
        with psycopg.connect(url, autocommit=True) as conn:
            while not self._halt.is_set():
                row = conn.execute(sql, params).fetchone()
                self.samples += 1
                if row and row[0] is not None:
                    self.longest_s = max(self.longest_s, float(row[0]))
                time.sleep(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join(timeout=5)
        return self.longest_s


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: …`` then ``t[0]`` is the elapsed seconds."""
    holder: list[float] = []
    started = time.perf_counter()
    try:
        yield holder
    finally:
        holder.append(time.perf_counter() - started)


# --- Output -----------------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(header: list[str], rows: list[list[str]], left: frozenset[int] = frozenset({0, 1})) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Names left-aligned, numbers right-aligned.
        padded = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return " | ".join(padded).rstrip()

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def rows_table(rows: list[Row]) -> str:
    header = ["name", "value", "unit", "baseline", "baseline value", "ratio", "target", "verdict", "spread", "note"]
    cells = [
        [
            row.name,
            _number(row.value),
            row.unit,
            row.baseline,
            _number(row.baseline_value),
            "-" if row.ratio is None else f"{row.ratio:.2f}×",
            "-" if row.target is None else f"≥ {row.target:g}×",
            row.verdict,
            _spreads(row),
            row.note,
        ]
        for row in rows
    ]
    return format_table(header, cells, left=frozenset({0, 2, 3, 7, 8, 9}))


def _spreads(row: Row) -> str:
    """min–max of ours; of the baseline's (only repeated rows have them)."""
    if row.spread is None and row.baseline_spread is None:
        return ""
    ours = row.spread.text() if row.spread else "-"
    theirs = row.baseline_spread.text() if row.baseline_spread else "-"
    return f"{ours}; {theirs}"


def write_json(rows: list[Row], path: str) -> None:
    Path(path).write_text(json.dumps([row.as_json() for row in rows], indent=2) + "\n")
