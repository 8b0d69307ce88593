"""OpenAPI details only known at schema time: the registered task types and the configured limits.

drf-spectacular builds the schema per request, so these follow ``TASKS_IMPORTS`` and
``TASKS_MAX_EXPIRES_IN`` of the running process; a schema-valid submission is then one that
submit() accepts, but for what JSON Schema cannot say (see docs/api.md: a NUL in the payload,
run_at beyond TASKS_MAX_EXPIRES_IN, run_at together with delay_seconds).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension

from tasks_app import conf, registry

NO_NUL = "^[^\\x00]*$"


class _Augmented(OpenApiSerializerFieldExtension):
    """What drf-spectacular would generate for the field, with ``extra`` added."""

    def extra(self) -> dict[str, Any]:
        raise NotImplementedError

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        return {**schema, **self.extra()}


class TaskTypeFieldSchema(_Augmented):
    """A submission's task_type: one of the registered names."""

    target_class = "tasks_app.api.fields.TaskTypeField"

    def extra(self) -> dict[str, Any]:
        return {"enum": registry.names(), "minLength": 1}


class SecondsFieldSchema(_Augmented):
    """Whole seconds, from the field's least value up to TASKS_MAX_EXPIRES_IN."""

    target_class = "tasks_app.api.fields.SecondsField"

    def extra(self) -> dict[str, Any]:
        return {"minimum": self.target.least, "maximum": int(conf.max_expires_in().total_seconds())}


class KeyFieldSchema(_Augmented):
    """An idempotency key: text with no NUL character (a text column refuses it)."""

    target_class = "tasks_app.api.fields.KeyField"

    def extra(self) -> dict[str, Any]:
        return {}

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        # Not drf-spectacular's oneOf of "a key" and "blank": "" matches both, which oneOf forbids.
        field = self.target
        schema: dict[str, Any] = {"type": "string", "maxLength": field.max_length, "pattern": NO_NUL}
        if field.allow_null:
            schema["nullable"] = True
        if field.help_text:
            schema["description"] = str(field.help_text)
        return schema


class UploadFieldSchema(OpenApiSerializerFieldExtension):
    """A multipart file part: binary, never null (drf-spectacular would say a nullable URI)."""

    target_class = "tasks_app.api.fields.UploadField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "format": "binary"}
        if self.target.help_text:
            schema["description"] = str(self.target.help_text)
        return schema


class SubmitBodySchema(OpenApiSerializerExtension):
    """The submit body, JSON or multipart: no field but its own (an unknown one is a 400)."""

    target_class = "tasks_app.api.serializers.TaskSubmitSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}
