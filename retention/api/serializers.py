"""Query parameters of the audit export: parsing only (the export itself is retention.audit)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from rest_framework import serializers


class MomentParam(serializers.Field):
    """An ISO 8601 datetime with a UTC offset, or a date (UTC midnight; the next one if ``end_of_day``)."""

    default_error_messages = {
        "invalid": "Not an ISO 8601 date or datetime (e.g. 2026-01-31 or 2026-01-31T12:00:00Z).",
        "naive": "This datetime has no UTC offset; add one (e.g. Z or +00:00, URL-encoded as %2B00:00) or give a date.",
    }

    def __init__(self, *, end_of_day: bool, **kwargs: Any) -> None:
        self.end_of_day = end_of_day
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> datetime:
        text = str(data).strip()
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            start = datetime.combine(day, time.min, tzinfo=UTC)
            return start + timedelta(days=1) if self.end_of_day else start
        # An unencoded "+" in a query string arrives as a space: "…T12:00:00 00:00".
        candidates = [text, "+".join(text.rsplit(" ", 1))] if " " in text else [text]
        moment = None
        for candidate in candidates:
            try:
                moment = datetime.fromisoformat(candidate)
            except ValueError:
                continue
            if moment.tzinfo is not None:
                return moment
        self.fail("invalid" if moment is None else "naive")
        raise AssertionError  # fail() always raises

    def to_representation(self, value: datetime) -> str:
        return value.isoformat()


class AuditQuerySerializer(serializers.Serializer):
    """``since`` (inclusive) and ``until`` (exclusive; a date includes that whole day)."""

    since = MomentParam(end_of_day=False, required=False)
    until = MomentParam(end_of_day=True, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since is not None and until is not None and since >= until:
            raise serializers.ValidationError({"until": ["until must be later than since."]})
        return attrs
