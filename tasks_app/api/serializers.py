"""Request and response shapes of the tasks API: parsing and translation only, no decisions.

What is valid (task types, limits, durations) is decided by ``tasks_app.services.submit``; the
serializers only turn request fields into its arguments and its errors back into request fields.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_app import downloads
from tasks_app.api import schema as _schema  # noqa: F401 - registers the OpenAPI field extensions
from tasks_app.api.fields import (
    ARGUMENT_FOR_FIELD,
    FIELD_FOR_ARGUMENT,
    KeyField,
    MomentField,
    PayloadField,
    RefusesUnknownFields,
    SecondsField,
    TaskTypeField,
    UploadField,
)
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus


class TaskSubmitSerializer(RefusesUnknownFields):
    """The body of ``POST /api/v1/tasks/`` (JSON, or multipart with ``input_file``)."""

    task_type = TaskTypeField(min_length=1, max_length=200, help_text="A registered task type, e.g. demo.echo.")
    payload = PayloadField(
        required=False, allow_null=True, help_text="Any JSON value (a JSON document in a form or multipart body)."
    )
    run_at = MomentField(
        required=False,
        allow_null=True,
        help_text=(
            "When to run, ISO 8601 with a UTC offset (JSON); not with delay_seconds. "
            "In a form or multipart body a time without an offset is read as UTC."
        ),
    )
    delay_seconds = SecondsField(required=False, allow_null=True, help_text="Run after this many seconds.")
    expires_in_seconds = SecondsField(
        least=1, required=False, allow_null=True, help_text="Delete the task's data this long after submission."
    )
    result_ttl_seconds = SecondsField(
        required=False, allow_null=True, help_text="Keep the result this long after the task finishes; 0 = do not."
    )
    idempotency_key = KeyField(
        required=False,
        allow_null=True,
        max_length=255,
        trim_whitespace=False,
        help_text=(
            "The same key from the same user with the same fields returns the existing task (200); "
            "with other fields it is refused (409). Blank = no key."
        ),
    )
    input_file = serializers.FileField(
        required=False, allow_null=True, allow_empty_file=True, use_url=False, help_text="Multipart only."
    )

    def submit_arguments(self) -> dict[str, Any]:
        """The validated request as keyword arguments of ``tasks_app.services.submit``."""
        return {ARGUMENT_FOR_FIELD.get(name, name): value for name, value in self.validated_data.items()}


class TaskSubmitJsonSerializer(TaskSubmitSerializer):
    """The JSON form of the submit body, as documented (a JSON body carries no file)."""

    class Meta:
        ref_name = "TaskSubmit"

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields.pop("input_file")
        return fields


class TaskSubmitMultipartSerializer(TaskSubmitSerializer):
    """The multipart form of the submit body, as documented: strings and a file, never null."""

    # A multipart body carries the payload as a string (the JSON body's field is a JSONField).
    payload = serializers.CharField(required=False, help_text="The payload as a JSON document.")  # type: ignore[assignment]
    run_at = serializers.DateTimeField(  # type: ignore[assignment]
        required=False, help_text="When to run, ISO 8601; without an offset it is read as UTC. Not with delay_seconds."
    )
    delay_seconds = SecondsField(required=False, help_text="Run after this many seconds.")
    expires_in_seconds = SecondsField(
        least=1, required=False, help_text="Delete the task's data this long after submission."
    )
    result_ttl_seconds = SecondsField(
        required=False, help_text="Keep the result this long after the task finishes; 0 = do not."
    )
    idempotency_key = KeyField(required=False, max_length=255, help_text="Blank = no key; see the JSON body.")
    input_file = UploadField(required=False, help_text="Stored as the task's input under tasks/<id>/input/.")


_ARGUMENT_NAMES = re.compile(r"\b(" + "|".join(FIELD_FOR_ARGUMENT) + r")\b")


def request_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    """submit()'s errors keyed by its arguments → the same messages keyed (and worded) by request field."""
    details = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD_ERRORS: exc.messages}
    errors: dict[str, list[str]] = {}
    for argument, messages in details.items():
        field = "non_field_errors" if argument in (NON_FIELD_ERRORS, "owner") else argument
        worded = [_ARGUMENT_NAMES.sub(lambda m: FIELD_FOR_ARGUMENT[m.group(1)], message) for message in messages]
        errors.setdefault(FIELD_FOR_ARGUMENT.get(field, field), []).extend(worded)
    return errors


class TaskSerializer(serializers.ModelSerializer):
    """A task as the list shows it (no payload)."""

    class Meta:
        model = Task
        fields = [
            "id",
            "task_type",
            "status",
            "run_at",
            "created_at",
            "started_at",
            "finished_at",
            "attempts",
            "max_attempts",
            "expires_at",
            "result_expires_at",
            "error",
        ]
        read_only_fields = fields


class StoredFileSerializer(serializers.ModelSerializer):
    """One file of a task: its input, or a file its result wrote."""

    name = serializers.SerializerMethodField(help_text="The file's name (the last part of its key).")
    download_url = serializers.SerializerMethodField(
        help_text="GET it with your token: a redirect to a short-lived link (S3) or the file itself (local storage)."
    )

    class Meta:
        model = StoredObject
        fields = ["id", "kind", "name", "key", "size", "created_at", "download_url"]
        read_only_fields = fields

    def get_name(self, stored: StoredObject) -> str:
        return downloads.name_of(stored)

    def get_download_url(self, stored: StoredObject) -> str:
        path = reverse("task-file", args=[stored.task_id, stored.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class TaskDetailSerializer(TaskSerializer):
    """A task with its payload and files (submit and retrieve)."""

    payload = serializers.JSONField(read_only=True)
    files = serializers.SerializerMethodField(
        help_text="Its input file and its result's files, while they may be read (result files go with the result)."
    )

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "payload", "files"]
        read_only_fields = fields

    @extend_schema_field(StoredFileSerializer(many=True))
    def get_files(self, task: Task) -> Any:
        # A task just submitted without a file has none: no query for it.
        files = self.context.get("files")
        if files is None:
            files = downloads.listed(task, now=timezone.now())
        return StoredFileSerializer(files, many=True, context=self.context).data


class GoneSerializer(serializers.ModelSerializer):
    """410 Gone: what is left of an expired task (the billing tombstone's public part)."""

    detail = serializers.CharField(read_only=True)
    final_status = serializers.SerializerMethodField(help_text="The status the task had when its data expired.")

    class Meta:
        model = Task
        fields = [
            "detail",
            "id",
            "task_type",
            "status",
            "final_status",
            "expires_at",
            "result_expires_at",
            "expired_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=TaskStatus.choices))
    def get_final_status(self, task: Task) -> str:
        # Set when the purge claims the task; before the sweep has come, the status it has now.
        return task.final_status or task.status


class ResultSerializer(serializers.ModelSerializer):
    """A task's stored JSON result."""

    task_id = serializers.UUIDField(read_only=True)
    # A declared field (DRF's metaclass moves it out of the class), not Serializer.data.
    data = serializers.JSONField(read_only=True)  # type: ignore[assignment]
    expires_at = serializers.DateTimeField(source="task.result_expires_at", read_only=True, allow_null=True)

    class Meta:
        model = TaskResult
        fields = ["task_id", "data", "created_at", "expires_at"]
        read_only_fields = fields


class ErasureSerializer(serializers.Serializer):
    """202 Accepted for an erasure: ``erased`` is false while it waits for a running task to finish."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    expired_at = serializers.DateTimeField(allow_null=True)
    erased = serializers.BooleanField()


class TaskFilterSerializer(serializers.Serializer):
    """The list's filters (the view refuses query parameters it does not know)."""

    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    task_type = serializers.CharField(required=False, max_length=200)


class DetailSerializer(serializers.Serializer):
    """An error with a message (404, 401, 403, 409, 429)."""

    detail = serializers.CharField()


def _messages() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(), required=False)


class ConflictSerializer(serializers.Serializer):
    """409: an idempotency_key reused with other fields; nothing was written."""

    detail = serializers.CharField()
    task_id = serializers.UUIDField(help_text="The task the key belongs to.")
    conflicting_fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Each request field that differs from the key's first submission, with a message.",
    )


class SubmitErrorsSerializer(serializers.Serializer):
    """400: messages per request field, keyed by the field's name as sent (also a field the endpoint does not know)."""

    task_type = _messages()
    payload = _messages()
    run_at = _messages()
    delay_seconds = _messages()
    expires_in_seconds = _messages()
    result_ttl_seconds = _messages()
    idempotency_key = _messages()
    input_file = _messages()
    non_field_errors = _messages()


class FilterErrorsSerializer(serializers.Serializer):
    """400: messages per query parameter."""

    status = _messages()
    task_type = _messages()
    cursor = _messages()
    page_size = _messages()
