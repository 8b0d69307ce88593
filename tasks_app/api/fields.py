"""The submit request's fields: seconds, moments, payloads, task types, keys, uploads, and the refusal of
fields the endpoint does not know (a typo must not be ignored)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from rest_framework import serializers

from tasks_app.api import schema as _schema  # noqa: F401 - registers the OpenAPI field extensions

# submit() argument → request field, for the ones whose names differ (units in request names).
FIELD_FOR_ARGUMENT = {
    "delay": "delay_seconds",
    "expires_in": "expires_in_seconds",
    "result_ttl": "result_ttl_seconds",
}
ARGUMENT_FOR_FIELD = {field: argument for argument, field in FIELD_FOR_ARGUMENT.items()}
# The largest number of seconds a timedelta holds; submit() then applies TASKS_MAX_EXPIRES_IN.
_MAX_SECONDS = int(timedelta.max.total_seconds())


class SecondsField(serializers.IntegerField):
    """Whole seconds in the request, a timedelta for submit() (which judges sign and size).

    ``least`` is the smallest value submit() accepts, for the schema (tasks_app.api.schema).
    """

    def __init__(self, *, least: int = 0, **kwargs: Any) -> None:
        self.least = least
        super().__init__(**kwargs)

    # IntegerField parses and checks the number; this field hands submit() a timedelta.
    def to_internal_value(self, data: Any) -> timedelta:  # type: ignore[override]
        seconds = super().to_internal_value(data)
        if abs(seconds) > _MAX_SECONDS:
            self.fail("max_value", max_value=_MAX_SECONDS)
        return timedelta(seconds=seconds)

    def to_representation(self, value: timedelta) -> int:  # type: ignore[override]
        return int(value.total_seconds())


class MomentField(serializers.DateTimeField):
    """An ISO 8601 datetime, passed on as given: submit() refuses one without a UTC offset.

    Except from a form (multipart or urlencoded body, as the browsable API's date widget sends
    one, which has no offset): there a naive value is read as UTC, as the form's help text says.
    """

    def enforce_timezone(self, value: datetime) -> datetime:
        if self.context.get("naive_is_utc") and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class PayloadField(serializers.JSONField):
    """Any JSON value; from a form, a JSON document in a string, and a blank one means no payload."""

    def get_value(self, dictionary: Any) -> Any:
        value = super().get_value(dictionary)
        if getattr(value, "is_json_string", False) and not value.strip():
            return None
        return value


class TaskTypeField(serializers.CharField):
    """A task type name; the schema lists the registered ones (tasks_app.api.schema)."""


class UploadField(serializers.FileField):
    """A multipart file part (its schema: tasks_app.api.schema)."""


class KeyField(serializers.CharField):
    """An idempotency key; blank (as an empty form field sends it) means no key.

    Blank is taken here, before CharField's own blank check (so no ``allow_blank``, which would
    split the schema into a oneOf that "" matches twice).
    """

    def run_validation(self, data: Any = serializers.empty) -> Any:
        if data == "":
            return None
        if data is not None and data is not serializers.empty and not isinstance(data, str):
            # CharField would take 42 as "42": a key is text, as the schema says.
            self.fail("invalid")
        return super().run_validation(data)


# Sent by the browsable API's form (Django's CSRF token): not a field of the request.
_FORM_NOISE = frozenset({"csrfmiddlewaretoken"})
# The Python argument names people type, and the request field each is spelled as here.
_PYTHON_SPELLINGS = {"delay": "delay_seconds", "expires_in": "expires_in_seconds", "result_ttl": "result_ttl_seconds"}


def unknown_field_errors(given: Any, known: Any) -> dict[str, list[str]]:
    """A 400 body naming each name in ``given`` that is not in ``known``, with the likely one meant."""
    if not isinstance(given, Mapping):
        return {}
    known = list(known)
    errors: dict[str, list[str]] = {}
    for name in given:
        if name in known or name in _FORM_NOISE:
            continue
        meant = _PYTHON_SPELLINGS.get(name) or next(iter(difflib.get_close_matches(str(name), known, n=1)), None)
        hint = f" Did you mean {meant}?" if meant else f" Known fields: {', '.join(known)}."
        errors[str(name)] = [f"Unknown field.{hint}"]
    return errors


class RefusesUnknownFields(serializers.Serializer):
    """A serializer that answers 400 for a field it does not know, instead of ignoring it (a typo
    such as ``expires_in`` would otherwise submit a task that never expires)."""

    def to_internal_value(self, data: Any) -> Any:
        unknown = unknown_field_errors(data, self.fields)
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, dict):
                raise serializers.ValidationError({**exc.detail, **unknown}) from None
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value
