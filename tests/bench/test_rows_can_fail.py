"""The bench's rows can fail: pure logic, no services touched (the rows are built from given numbers)."""

from __future__ import annotations

import pytest

from bench import kill, sealing, starts
from bench.common import FAIL, INFO, PASS, Row, Spread, judge, ratio, rows_table, turns
from bench.durable import durable_argv


def test_a_ratio_below_its_target_fails() -> None:
    # given a baseline twice as fast as ours
    # when the row is judged against a target of 0.8
    row = Row("x_per_s", 500.0, "tasks/s", "celery", 1000.0, ratio(500.0, 1000.0), target=0.8)

    # then it fails
    assert row.verdict == FAIL


def test_a_ratio_at_or_above_its_target_passes_and_a_row_without_target_only_informs() -> None:
    assert judge(0.8, 0.8) == PASS
    assert judge(1.3, None) == INFO


def test_no_ratio_to_judge_fails() -> None:
    # A side that produced no number cannot show the target met.
    assert judge(None, 1.0) == FAIL
    assert ratio(None, 10.0) is None
    assert ratio(5.0, 0.0) is None


def test_lower_is_better_rows_fail_when_ours_is_slower() -> None:
    # given our p99 lateness three times Celery's, lateness judged at 0.5 (ours at most twice Celery's)
    row = starts.lateness_row("burst", [100.0, 110.0, 90.0], [300.0, 320.0, 280.0])

    # then the row fails, with the medians and each side's spread
    assert row.verdict == FAIL
    assert row.value == 300.0
    assert row.baseline_value == 100.0
    assert row.spread == Spread(300.0, 280.0, 320.0)
    assert row.baseline_spread == Spread(100.0, 90.0, 110.0)


def test_task_starts_fail_below_the_target_and_pass_above() -> None:
    slow = starts.starts_row([2000.0, 1900.0, 2100.0], [700.0, 650.0, 720.0], 2000)
    fast = starts.starts_row([2000.0, 1900.0, 2100.0], [1900.0, 1800.0, 2000.0], 2000)

    assert slow.verdict == FAIL
    assert fast.verdict == PASS


def test_repetitions_alternate_who_goes_first() -> None:
    assert turns(3, "celery", "ours") == [("celery", "ours"), ("ours", "celery"), ("celery", "ours")]


def _all_by(killed_at: float, after: float) -> list[float]:
    return [killed_at + after * (i + 1) / kill.COUNT for i in range(kill.COUNT)]


def test_kill_row_fails_when_ours_never_all_ran() -> None:
    # given 60 of our 100 tasks ran in the window, and none of Celery's
    killed_at = 1000.0
    ours = kill.finish(_all_by(killed_at, 30.0)[:60], killed_at)
    celery = kill.finish([], killed_at)

    # when the row is built
    row = kill.row(ours, celery, held_ours=kill.COUNT)

    # then it fails, with no time and no ratio (not a flattering "100×")
    assert ours == kill.Finish(60, None)
    assert row.verdict == FAIL
    assert row.value is None
    assert row.ratio is None
    assert "only 60 of 100" in row.note


def test_kill_row_counts_only_starts_within_the_window() -> None:
    killed_at = 1000.0
    late = kill.finish(_all_by(killed_at, kill.WINDOW_S + 5), killed_at)

    assert late.seconds is None
    assert late.ran < kill.COUNT


def test_kill_row_fails_when_celery_came_back_sooner() -> None:
    killed_at = 1000.0
    ours = kill.finish(_all_by(killed_at, 65.0), killed_at)
    celery = kill.finish(_all_by(killed_at, 10.0), killed_at)

    row = kill.row(ours, celery, held_ours=kill.COUNT)

    assert row.value == pytest.approx(65.0)
    assert row.baseline_value == pytest.approx(10.0)
    assert row.verdict == FAIL


def test_kill_row_fails_when_ours_were_not_in_the_worker() -> None:
    # A kill before the dispatcher handed ours to the worker exercises no recovery.
    killed_at = 1000.0
    ours = kill.finish(_all_by(killed_at, 5.0), killed_at)

    row = kill.row(ours, kill.finish([], killed_at), held_ours=0)

    assert row.verdict == FAIL
    assert "recovery not exercised" in row.note


def test_kill_row_passes_when_ours_recovered_and_celery_did_not() -> None:
    killed_at = 1000.0
    ours = kill.finish(_all_by(killed_at, 65.0), killed_at)

    row = kill.row(ours, kill.finish([], killed_at), held_ours=kill.COUNT)

    assert row.verdict == PASS
    assert row.ratio is None
    assert row.baseline_value is None
    assert "0 of 100 ran" in row.baseline


def test_the_table_shows_the_verdict_and_the_spreads() -> None:
    row = starts.starts_row([2000.0, 1900.0, 2100.0], [700.0, 650.0, 720.0], 2000)

    table = rows_table([row])

    assert "FAIL" in table
    assert "650–720; 1,900–2,100" in table


def test_the_durability_pass_turns_every_setting_on() -> None:
    argv = ["postgres", "-D", "x", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=300"]

    assert durable_argv(argv) == [
        "postgres", "-D", "x", "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=300",
    ]  # fmt: skip


def _sealed(count: int) -> list[sealing.Seals]:
    return [sealing.Seals(attempts=5, made=4, records=800) for _ in range(count)]


def test_seal_overhead_fails_when_sealing_on_is_more_than_10_percent_slower() -> None:
    # given the purge at 1,000 tasks/s with sealing off and 880 with a sealer running (12 % slower)
    off, on = [1000.0, 990.0, 1010.0], [880.0, 870.0, 890.0]

    # when the row is built
    row = sealing.overhead_row("purge_seal_overhead", "tasks/s", off, on, _sealed(3), "N=1000")

    # then it fails, with sealing on as ours and sealing off as the baseline
    assert row.verdict == FAIL
    assert row.value == 880.0
    assert row.baseline_value == 1000.0
    assert row.ratio == pytest.approx(0.88)
    assert row.spread == Spread(880.0, 870.0, 890.0)


def test_seal_overhead_passes_within_10_percent() -> None:
    row = sealing.overhead_row("result_sweep_seal_overhead", "rows/s", [1000.0] * 3, [920.0] * 3, _sealed(3), "")

    assert row.verdict == PASS


def test_seal_overhead_fails_when_no_seal_ran_during_a_timed_run() -> None:
    # A run that met no seal shows nothing about sealing's cost, however fast it was.
    seals = [*_sealed(2), sealing.Seals()]

    row = sealing.overhead_row("purge_seal_overhead", "tasks/s", [1000.0] * 3, [1000.0] * 3, seals, "")

    assert row.verdict == FAIL
    assert "sealing not exercised in 1 run(s)" in row.note


def test_only_seal_attempts_overlapping_the_timed_region_count() -> None:
    attempts = [
        [0.0, 0.5, 100, ""],  # the backlog seal, before the region
        [1.8, 2.1, 40, ""],  # overlaps its start
        [2.5, 2.6, 0, ""],  # took the fence, nothing to seal
        [2.9, 4.9, None, "OperationalError: lock timeout"],
        [5.5, 5.6, 10, ""],  # after the region
    ]

    seals = sealing.in_window(attempts, 2.0, 5.0)

    assert (seals.attempts, seals.made, seals.records) == (3, 1, 40)
    assert seals.errors == ["OperationalError: lock timeout"]
