"""The tasks endpoints: thin views over ``tasks_app.services`` and the erasure hook.

An owner sees only its own tasks: every lookup goes through ``Task.objects.for_owner``, so
another user's id (or a malformed one) is a 404, never a 403 that would confirm it exists.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from tasks_app import downloads, hooks, services
from tasks_app.api.fields import unknown_field_errors
from tasks_app.api.serializers import (
    FIELD_FOR_ARGUMENT,
    ConflictSerializer,
    DetailSerializer,
    ErasureSerializer,
    FilterErrorsSerializer,
    GoneSerializer,
    ResultSerializer,
    SubmitErrorsSerializer,
    TaskDetailSerializer,
    TaskFilterSerializer,
    TaskSerializer,
    TaskSubmitJsonSerializer,
    TaskSubmitMultipartSerializer,
    TaskSubmitSerializer,
    request_errors,
)
from tasks_app.exceptions import ErasureRefused, IdempotencyConflict, ResultGone
from tasks_app.models import Task, TaskStatus

COMMON_RESPONSES = {
    401: OpenApiResponse(DetailSerializer, description="No or invalid credentials (Authorization: Token …)."),
    429: OpenApiResponse(DetailSerializer, description="Throttled (API_THROTTLE_ANON / API_THROTTLE_USER)."),
}
NOT_FOUND = OpenApiResponse(DetailSerializer, description="No such task of yours (or not a task id).")
GONE = OpenApiResponse(GoneSerializer, description="The task's data expired (or is being deleted).")


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
SUBMIT_EXAMPLE = OpenApiExample(
    "Run demo.echo now, kept an hour",
    value={"task_type": "demo.echo", "payload": {"hello": "world"}, "expires_in_seconds": 3600},
    request_only=True,
)


class TaskCursorPagination(CursorPagination):
    """Newest first; a cursor stays valid while tasks are added (no OFFSET)."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request: Request) -> int | None:
        given = request.query_params.get(self.page_size_query_param, "")
        if given and not (given.isascii() and given.isdigit() and 0 < int(given) <= self.max_page_size):
            # DRF silently falls back to the default (or clamps to the maximum); say what is wrong instead.
            raise ValidationError({self.page_size_query_param: [f"A whole number from 1 to {self.max_page_size}."]})
        return super().get_page_size(request)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
                parameter["description"] = f"Tasks per page, 1 to {self.max_page_size} (default {self.page_size})."
        return parameters

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError({self.cursor_query_param: [self.invalid_cursor_message]}) from None


def _conflict(conflict: IdempotencyConflict) -> Response:
    fields = {FIELD_FOR_ARGUMENT.get(name, name): messages for name, messages in conflict.message_dict.items()}
    body = {
        "detail": f"This idempotency_key was first used with other values of: {', '.join(fields)}. "
        "Nothing was stored; send a new key for a different request.",
        "task_id": conflict.task.pk,
        "conflicting_fields": fields,
    }
    return Response(ConflictSerializer(body).data, status=status.HTTP_409_CONFLICT)


def _gone(task: Task, detail: str) -> Response:
    return Response({"detail": detail, **GoneSerializer(task).data}, status=status.HTTP_410_GONE)


# The list's query parameters: its filters, the cursor pagination's, and DRF's ?format=.
LIST_PARAMETERS = ("status", "task_type", "cursor", "page_size", "format")


class TaskViewSet(viewsets.GenericViewSet):
    """Submit, list, read, read the result of, and erase the caller's own tasks."""

    queryset = Task.objects.none()  # every lookup is for_owner(request.user); this only types the schema
    serializer_class = TaskDetailSerializer
    pagination_class = TaskCursorPagination
    parser_classes = [JSONParser, MultiPartParser, FormParser]
    # Any id but one with a slash reaches get_object, which answers a JSON 404 (DRF's default
    # pattern leaves out dots, so "/tasks/0.5/" fell through to Django's HTML 404 page).
    lookup_value_regex = "[^/]+"

    def get_serializer_class(self) -> type:
        # The browsable API draws its POST form from this.
        return TaskSubmitSerializer if self.request.method == "POST" else TaskDetailSerializer

    def get_object(self) -> Task:
        try:
            task_id = uuid.UUID(str(self.kwargs["pk"]))
        except ValueError:
            raise NotFound("No such task.") from None
        task = Task.objects.for_owner(self.request.user).filter(pk=task_id).first()
        if task is None:
            raise NotFound("No such task.")
        return task

    @extend_schema(
        summary="Submit a task",
        request={"application/json": TaskSubmitJsonSerializer, "multipart/form-data": TaskSubmitMultipartSerializer},
        examples=[SUBMIT_EXAMPLE],
        responses={
            200: OpenApiResponse(
                TaskDetailSerializer, description="The idempotency_key's task, submitted before with the same fields."
            ),
            201: TaskDetailSerializer,
            400: OpenApiResponse(
                SubmitErrorsSerializer, description="Rejected (a bad or unknown field); nothing was stored."
            ),
            409: OpenApiResponse(
                ConflictSerializer, description="The idempotency_key was used with other fields; nothing was stored."
            ),
            410: OpenApiResponse(
                GoneSerializer, description="The idempotency_key's task expired (its data is deleted)."
            ),
            **COMMON_RESPONSES,
        },
    )
    def create(self, request: Request) -> Response:
        """Submit a task to run now, at ``run_at`` or after ``delay_seconds``; 400 names each bad or unknown field.

        A repeated ``idempotency_key`` with the same fields answers 200 with the task it made; with
        other fields, 409 naming them. Nothing is written either way.
        """
        try:
            data = request.data
        except RequestDataTooBig:
            # Django refuses to read a body over DATA_UPLOAD_MAX_MEMORY_SIZE (files aside): the payload.
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            raise ValidationError({"payload": [f"The request is over the server's limit of {limit} bytes."]}) from None
        # A form's date widget has no offset: there (only) a naive run_at is read as UTC.
        from_form = (request.content_type or "").startswith(_FORM_TYPES)
        submission = TaskSubmitSerializer(data=data, context={"naive_is_utc": from_form})
        submission.is_valid(raise_exception=True)
        try:
            outcome = services.submit_outcome(**submission.submit_arguments(), owner=request.user)
        except IdempotencyConflict as conflict:
            return _conflict(conflict)
        except DjangoValidationError as exc:
            raise ValidationError(request_errors(exc)) from None
        task = outcome.task
        location = request.build_absolute_uri(reverse("task-detail", args=[task.pk]))
        if outcome.created:
            # Only an uploaded input makes a file at submission: without one, no query for the list.
            context = {"request": request, **({} if "input_file" in submission.validated_data else {"files": []})}
            return Response(
                TaskDetailSerializer(task, context=context).data,
                status=status.HTTP_201_CREATED,
                headers={"Location": location},
            )
        if services.data_gone(task, now=timezone.now()):
            return _gone(task, "This idempotency_key's task expired: its data is deleted.")
        body = TaskDetailSerializer(task, context={"request": request}).data
        return Response(body, status=status.HTTP_200_OK, headers={"Location": location})

    @extend_schema(
        summary="List your tasks",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=TaskStatus.values, description="Only this status."),
            OpenApiParameter("task_type", OpenApiTypes.STR, description="Only this task type."),
        ],
        responses={
            200: TaskSerializer(many=True),
            400: OpenApiResponse(FilterErrorsSerializer, description="A bad filter value or cursor."),
            **COMMON_RESPONSES,
        },
    )
    def list(self, request: Request) -> Response:
        """The caller's tasks, newest first, a page at a time (follow ``next``)."""
        unknown = unknown_field_errors(request.query_params, LIST_PARAMETERS)
        if unknown:
            raise ValidationError(unknown)
        given = {name: value for name, value in request.query_params.items() if value != ""}
        filters = TaskFilterSerializer(data={name: given[name] for name in ("status", "task_type") if name in given})
        filters.is_valid(raise_exception=True)
        tasks = Task.objects.for_owner(request.user).filter(**filters.validated_data)
        page = self.paginate_queryset(tasks)
        return self.get_paginated_response(TaskSerializer(page, many=True).data)

    @extend_schema(
        summary="Read a task",
        responses={200: TaskDetailSerializer, 404: NOT_FOUND, 410: GONE, **COMMON_RESPONSES},
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        """The task with its payload; 410 Gone once its data expired or is being deleted."""
        task = self.get_object()
        if services.data_gone(task, now=timezone.now()):
            return _gone(task, "This task's data has expired and is deleted.")
        return Response(TaskDetailSerializer(task, context={"request": request}).data)

    @extend_schema(
        summary="Read a task's result",
        responses={
            200: ResultSerializer,
            404: OpenApiResponse(DetailSerializer, description="No such task of yours, or no result (yet)."),
            410: OpenApiResponse(GoneSerializer, description="The result (or the whole task) expired."),
            **COMMON_RESPONSES,
        },
    )
    @action(detail=True, methods=["get"])
    def result(self, request: Request, pk: str) -> Response:
        """The task's JSON result; 404 while there is none, 410 once it or the task expired."""
        task = self.get_object()
        try:
            result = services.readable_result(task, now=timezone.now())
        except ResultGone:
            return _gone(task, "This task's result has expired and is deleted.")
        if result is None:
            raise NotFound(f"This task has no result (status: {task.status}).")
        result.task = task
        return Response(ResultSerializer(result).data)

    @extend_schema(
        summary="Download one of a task's files",
        parameters=[OpenApiParameter("file_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="A file's id.")],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The file (local storage), as an attachment."
            ),
            302: OpenApiResponse(description="S3: a redirect to a presigned link, valid TASKS_DOWNLOAD_URL_TTL."),
            404: OpenApiResponse(DetailSerializer, description="No such task of yours, or no such file of it."),
            410: OpenApiResponse(GoneSerializer, description="The file expired with the task or its result."),
            **COMMON_RESPONSES,
        },
    )
    @action(detail=True, methods=["get"], url_path=r"files/(?P<file_id>[^/]+)", url_name="file")
    def file(self, request: Request, pk: str, file_id: str) -> HttpResponseBase:
        """Download a file the task's representation lists; only its owner may."""
        task = self.get_object()
        now = timezone.now()
        if services.data_gone(task, now=now):
            return _gone(task, "This task's data has expired and is deleted.")
        try:
            stored = downloads.readable(task, file_id, now=now)
        except ResultGone:
            return _gone(task, "This file belonged to the task's result, which has expired and is deleted.")
        if stored is None:
            raise NotFound("This task has no such file.")
        url = downloads.presigned_url(stored)
        if url is not None:
            return HttpResponseRedirect(url)
        try:
            handle = downloads.open_local(stored)
        except FileNotFoundError:
            # Deleted since the row was read (a purge under way): as good as expired.
            return _gone(task, "This file has been deleted.")
        return FileResponse(handle, as_attachment=True, filename=downloads.name_of(stored))

    @extend_schema(
        summary="Erase a task's data",
        request=None,
        responses={
            202: ErasureSerializer,
            404: NOT_FOUND,
            409: OpenApiResponse(DetailSerializer, description="A legal hold keeps the data; nothing was changed."),
            410: OpenApiResponse(GoneSerializer, description="Already erased (or expired): nothing left to delete."),
            **COMMON_RESPONSES,
        },
    )
    def destroy(self, request: Request, pk: str) -> Response:
        """Erase the task's payload, result and files now, audited as the owner's request (``user_erasure``).

        A running task is erased as soon as it finishes (``erased`` false). A second DELETE
        after the erasure answers 410.
        """
        task = self.get_object()
        if task.status == TaskStatus.EXPIRED:
            return _gone(task, "This task's data was already deleted.")
        try:
            erased = hooks.request_erasure(task, now=timezone.now())
        except ErasureRefused:
            return Response(
                {"detail": "A legal hold covers this task: its data cannot be erased while the hold lasts."},
                status=status.HTTP_409_CONFLICT,
            )
        task.refresh_from_db()
        body = {"id": task.pk, "status": task.status, "expired_at": task.expired_at, "erased": erased}
        return Response(ErasureSerializer(body).data, status=status.HTTP_202_ACCEPTED)
