"""The orphan sweep run several times, as beat would, keeping what each pass reported (its errors,
or the exception it raised): for tests of what is left once the sweeps ran."""

from __future__ import annotations

from typing import Any

from retention.sweeping import sweeps


def _sweep_all_orphans(now: Any, passes: int = 3) -> list[Any]:
    """Run the orphan sweep ``passes`` times (a listing pass each, at this size); return errors seen."""
    seen: list[Any] = []
    for _ in range(passes):
        try:
            run = sweeps.sweep_orphans(now)
            seen.append(run.errors if run is not None else None)
        except Exception as exc:  # noqa: BLE001 - the failure is what the test reports
            seen.append(repr(exc))
    return seen
