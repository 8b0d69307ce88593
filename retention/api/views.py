"""The audit export: the trail as a CSV stream, for staff allowed to view audit records."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.http import Http404, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from retention.api.serializers import AuditQuerySerializer
from retention.audit import export, receipts
from tasks_app.api.fields import unknown_field_errors

# Before the first record anything could have: the default of ``since``.
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
_DETAIL = inline_serializer("AuditErrorDetail", {"detail": serializers.CharField()})
_CSV_ERRORS = "The same error as field,message rows (field: the parameter, or detail)."


class CanExportAudit(BasePermission):
    """Staff with ``retention.view_auditrecord`` (a superuser has every permission)."""

    message = "Exporting the audit trail needs staff status and the retention.view_auditrecord permission."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_staff and user.has_perm("retention.view_auditrecord"))


class CSVRenderer(BaseRenderer):
    """Lets clients ask for text/csv; only error bodies go through it (the export streams itself)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(["field", "message"])
        items = data.items() if isinstance(data, Mapping) else [("detail", data)]
        for field, messages in items:
            for message in messages if isinstance(messages, list) else [messages]:
                writer.writerow([field, export.neutralise(str(message))])
        return out.getvalue().encode()


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


# A datetime with its offset (RFC 3339 date-time), or a calendar date.
_MOMENT = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}
# The export's query parameters (DRF's ?format= among them): any other is refused by name.
PARAMETERS = ("since", "until", "format")


class AuditExportView(APIView):
    """GET /api/v1/audit/?since=&until= → every audit record in that window, as CSV."""

    permission_classes = [IsAuthenticated, CanExportAudit]
    renderer_classes = [JSONRenderer, CSVRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        try:
            return super().perform_content_negotiation(request, force)
        except Http404:
            # DRF answers an unknown ?format= with a bare 404; name the parameter instead.
            formats = ", ".join(renderer.format for renderer in self.get_renderers())
            raise ValidationError({"format": [f"Unknown format; use one of: {formats}."]}) from None

    @extend_schema(
        summary="Export the audit trail as CSV",
        parameters=[
            OpenApiParameter("since", _MOMENT, description="ISO 8601 datetime with offset, or a date (inclusive)."),
            OpenApiParameter(
                "until",
                _MOMENT,
                description="ISO 8601 datetime with offset (exclusive), or a date (that whole day included); "
                "later than since.",
            ),
        ],
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="Columns: " + ",".join(export.CSV_COLUMNS) + " (occurred_at in UTC)."
            ),
            (400, "application/json"): OpenApiResponse(
                inline_serializer(
                    "AuditQueryErrors",
                    {
                        "since": serializers.ListField(child=serializers.CharField(), required=False),
                        "until": serializers.ListField(child=serializers.CharField(), required=False),
                        "format": serializers.ListField(child=serializers.CharField(), required=False),
                    },
                ),
                description="A bad date or format; the key names the parameter.",
            ),
            (401, "application/json"): OpenApiResponse(_DETAIL, description="No or invalid credentials."),
            (403, "application/json"): OpenApiResponse(
                _DETAIL, description="Not staff with retention.view_auditrecord."
            ),
            (429, "application/json"): OpenApiResponse(_DETAIL, description="Throttled."),
            # A client that accepts only CSV (or sends ?format=csv) gets its errors as CSV rows.
            **{
                (code, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description=_CSV_ERRORS)
                for code in (400, 401, 403, 429)
            },
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        """Stream the records with since <= occurred_at < until (default: from the start until now)."""
        unknown = unknown_field_errors(request.query_params, PARAMETERS)
        if unknown:
            raise ValidationError(unknown)
        given = {name: value for name, value in request.query_params.items() if value != ""}
        query = AuditQuerySerializer(data={name: given[name] for name in ("since", "until") if name in given})
        query.is_valid(raise_exception=True)
        since = query.validated_data.get("since", BEGINNING)
        until = query.validated_data.get("until") or timezone.now()
        response = StreamingHttpResponse(export.export(since, until), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit-{_stamp(since)}-{_stamp(until)}.csv"'
        response["Cache-Control"] = "no-store"
        return response


class DeletionReceiptView(APIView):
    """``GET /api/v1/tasks/<id>/receipt/``: the deletion receipt of a purged task (retention/audit/receipts.py)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="A purged task's deletion receipt",
        parameters=[OpenApiParameter("task_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        description=(
            "The task's audit records, the seal covering each with an RFC 6962 inclusion proof, and a listing of "
            "the task's storage prefix taken now (objects; on a versioned bucket also versions and delete "
            "markers). For the task's owner, or staff with retention.view_auditrecord. 409 while its data is not "
            "deleted yet; 404 for an unknown task or another owner's."
        ),
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="The receipt."),
            404: OpenApiResponse(_DETAIL, description="No such task (or not yours)."),
            409: OpenApiResponse(_DETAIL, description="The task's data is not deleted yet."),
        },
    )
    def get(self, request: Request, task_id: str) -> Response:
        try:
            task_uuid = UUID(task_id)
        except ValueError as exc:
            raise Http404 from exc  # as the task routes answer an id that is not one
        user = request.user
        auditor = user.is_staff and user.has_perm("retention.view_auditrecord")
        if not auditor and receipts.receipt_owner_id(task_uuid) != user.pk:
            raise Http404
        try:
            return Response(receipts.build(task_uuid, now=timezone.now()))
        except receipts.NoSuchDeletion as exc:
            raise Http404 from exc
        except receipts.NotDeletedYet as exc:
            return Response({"detail": str(exc)}, status=409)
