"""The machine-written records in the admin, read-only: the audit trail (with its CSV export) and sweep runs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, StreamingHttpResponse
from django.urls import path
from django.utils import timezone

from retention.audit import export
from retention.models import AuditRecord, SweepRun
from tasks_app.admin import ReadOnlyAdmin


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "occurred_at",
        "action",
        "reason",
        "task_id",
        "owner_id",
        "task_type",
        "objects_deleted",
        "bytes_freed",
    ]
    list_filter = ["action", "reason"]
    search_fields = ["=task_id", "task_type"]
    date_hierarchy = "occurred_at"
    ordering = ["-occurred_at", "-pk"]
    show_full_result_count = False
    change_list_template = "admin/retention/auditrecord/change_list.html"

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.export_view)
        return [path("export.csv", view, name="retention_auditrecord_export"), *super().get_urls()]

    def export_view(self, request: HttpRequest) -> StreamingHttpResponse:
        """The records the list shows (same filters, search and dates) as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        records = self.get_changelist_instance(request).queryset
        response = StreamingHttpResponse(export.csv_lines(export.keyset_records(records)), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%dT%H%M%SZ}.csv"'
        return response


@admin.register(SweepRun)
class SweepRunAdmin(ReadOnlyAdmin):
    list_display = [
        "started_at",
        "kind",
        "finished_at",
        "claimed",
        "purged",
        "failed",
        "shadow",
        "objects_deleted",
        "bytes_freed",
        "missing_objects",
    ]
    list_filter = ["kind"]
    date_hierarchy = "started_at"
    show_full_result_count = False
