"""The fingerprint of a submission: what a reused ``idempotency_key`` must repeat.

One SHA-256 per argument over its canonical JSON (sorted keys, no spaces), so a conflict can
name the arguments that differ (as Stripe's 409 does). Timing is compared as it was asked for:
``delay`` in seconds (a retry a minute later with the same delay is the same request), ``run_at``
as a UTC instant (offsets that name one instant are equal). The input file counts by its bytes'
SHA-256. Only computed when a key is given, so the common submit pays nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, timedelta
from typing import Any

from django.core.files.base import File

from tasks_app.validation import Submission, Valid

Fingerprint = dict[str, str]

# In the order a conflict names them.
COMPARED = ("task_type", "payload", "run_at", "delay", "expires_in", "result_ttl", "input_file")


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def file_sha256(input_file: Any) -> str:
    """The SHA-256 of a file's bytes, read from the start; the file is left rewound for the upload."""
    if isinstance(input_file, bytes):
        return hashlib.sha256(input_file).hexdigest()
    content = input_file if isinstance(input_file, File) else File(input_file)
    digest = hashlib.sha256()
    for chunk in content.chunks():  # seeks to the start when it can
        digest.update(chunk)
    if content.seekable():
        content.seek(0)
    return digest.hexdigest()


def of(request: Submission, valid: Valid) -> Fingerprint:
    """The fingerprint of a validated submission."""
    values: dict[str, Any] = {
        "task_type": valid.spec.name,
        "payload": valid.payload,
        "run_at": None if request.run_at is None else request.run_at.astimezone(UTC).isoformat(),
        "delay": _seconds(request.delay),
        "expires_in": _seconds(request.expires_in),
        "result_ttl": _seconds(request.result_ttl),
        "input_file": None if request.input_file is None else file_sha256(request.input_file),
    }
    return {
        name: hashlib.sha256(
            json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
        for name, value in values.items()
    }


def differences(stored: Fingerprint | None, given: Fingerprint) -> list[str]:
    """The arguments whose digests differ; none when the stored task has no fingerprint to compare.

    A task submitted before fingerprints existed, or a tombstone (its fingerprint is cleared with
    its payload), cannot be compared: the key alone decides, as it always did.
    """
    if not stored:
        return []
    return [name for name in COMPARED if stored.get(name) != given.get(name)]
