"""The machine-written records in the admin, read-only: the audit trail (with its CSV export) and sweep runs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, StreamingHttpResponse
from django.template.defaultfilters import filesizeformat
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from retention.admin.filters import SweepOutcomeFilter
from retention.audit import export
from retention.models import AuditRecord, SweepRun
from tasks_app.admin import ReadOnlyAdmin


def short_uuid(value: Any) -> str:
    """The first 8 characters of an id, the whole id in its tooltip (a full UUID would widen the list)."""
    if value is None:
        return "-"
    return format_html('<span class="short-id" title="{}">{}…</span>', value, str(value)[:8])


def when(moment: Any) -> str:
    """A timestamp to the second, kept on one line."""
    if moment is None:
        return "-"
    return format_html('<span style="white-space: nowrap">{}</span>', f"{moment:%Y-%m-%d %H:%M:%S}")


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "occurred",
        "action",
        "reason",
        "task",
        "owner_id",
        "task_type",
        "objects",
        "freed",
    ]
    list_display_links = ["occurred"]
    list_filter = ["action", "reason"]
    search_fields = ["=task_id", "task_type"]
    date_hierarchy = "occurred_at"
    ordering = ["-occurred_at", "-pk"]
    show_full_result_count = False
    change_list_template = "admin/retention/auditrecord/change_list.html"

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    @admin.display(description="occurred at", ordering="occurred_at")
    def occurred(self, record: AuditRecord) -> str:
        return when(record.occurred_at)

    @admin.display(description="task id", ordering="task_id")
    def task(self, record: AuditRecord) -> str:
        return short_uuid(record.task_id)

    @admin.display(description="objects", ordering="objects_deleted")
    def objects(self, record: AuditRecord) -> int:
        return record.objects_deleted

    @admin.display(description="freed", ordering="bytes_freed")
    def freed(self, record: AuditRecord) -> str:
        return filesizeformat(record.bytes_freed)

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
        "started",
        "kind",
        "duration",
        "claimed",
        "purged",
        "failed",
        "shadow",
        "objects",
        "freed",
        "missing",
    ]
    list_display_links = ["started"]
    # Most runs find nothing to do (a tasks sweep every 10 s): "did something" and "failed" find the rest.
    list_filter = [SweepOutcomeFilter, "kind"]
    date_hierarchy = "started_at"
    show_full_result_count = False

    @admin.display(description="started at", ordering="started_at")
    def started(self, run: SweepRun) -> str:
        return when(run.started_at)

    @admin.display(description="duration")
    def duration(self, run: SweepRun) -> str:
        if run.finished_at is None:
            return "running"
        seconds = (run.finished_at - run.started_at).total_seconds()
        return f"{seconds:.2f} s" if seconds < 60 else f"{seconds / 60:.1f} min"

    @admin.display(description="objects", ordering="objects_deleted")
    def objects(self, run: SweepRun) -> int:
        return run.objects_deleted

    @admin.display(description="freed", ordering="bytes_freed")
    def freed(self, run: SweepRun) -> str:
        return filesizeformat(run.bytes_freed)

    @admin.display(description="missing", ordering="missing_objects")
    def missing(self, run: SweepRun) -> int:
        return run.missing_objects
