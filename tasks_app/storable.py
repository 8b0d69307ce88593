"""What PostgreSQL can store in a JSON or text column: no NUL characters, no lone surrogates, no NaN or infinities.

Checked before a write, so bad input is refused with the place it occurs (``payload['a'][2]``)
instead of a DataError from deep inside a transaction.
"""

from __future__ import annotations

import json
import math
from typing import Any

NUL = "\x00"


def problem(value: Any, where: str) -> str | None:
    """Describe the first thing in ``value`` a JSON column cannot hold, or None if it can hold it all."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        found = _walk(value, where)
        return found or f"{where} is not JSON-serialisable ({exc})"
    return _walk(value, where)


def _bad_text(value: str) -> str | None:
    if NUL in value:
        return "NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can spell it, PostgreSQL refuses it
        return "invalid Unicode (a lone surrogate)"
    return None


def _walk(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        found = _bad_text(value)
        return f"{found} in {where}" if found else None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} (not a finite number) at {where}"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (found := _bad_text(key)):
                return f"{found} in a key of {where}"
            found = _walk(item, f"{where}[{key!r}]")
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _walk(item, f"{where}[{index}]")
            if found:
                return found
    return None


def text(value: str) -> str:
    """``value`` with NUL characters made visible (a text column refuses them)."""
    return value.replace(NUL, "\\x00")
