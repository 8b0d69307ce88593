"""``PurgeCounts``: what one deletion batch did, added up per chunk and per sweep run.

It sits with the deletion engine, which fills it; ``sweeping.runs`` stores it on the ``SweepRun``
row, one column per counter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Error messages kept per part and per run (the first ones: later ones repeat them).
MAX_ERRORS = 50


@dataclass
class PurgeCounts:
    """What one batch (or a whole run) did."""

    claimed: int = 0
    purged: int = 0
    failed: int = 0
    shadow: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    missing_objects: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: PurgeCounts) -> PurgeCounts:
        for name in ("claimed", "purged", "failed", "shadow", "objects_deleted", "bytes_freed", "missing_objects"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors = (self.errors + other.errors)[:MAX_ERRORS]
        return self

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message[:500])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
