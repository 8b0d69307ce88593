"""Admin for retention: policies and legal holds are edited here; audit records and sweep runs are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from retention import services
from retention.models import AuditRecord, LegalHold, RetentionPolicy, SweepRun
from tasks_app.admin import ReadOnlyAdmin


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "task_type", "status", "keep_for", "keep_last", "result_ttl", "mode", "enabled"]
    list_filter = ["enabled", "mode", "status"]
    search_fields = ["task_type"]
    fields = ["task_type", "status", "keep_for", "keep_last", "result_ttl", "mode", "enabled"]
    readonly_fields = ["created_at", "updated_at", "updated_by"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.fields + (self.readonly_fields if obj is not None else [])

    def save_model(self, request: HttpRequest, obj: RetentionPolicy, form: Any, change: bool) -> None:
        obj.updated_by = request.user if request.user.is_authenticated else None
        super().save_model(request, obj, form, change)


@admin.action(description="Release selected legal holds")
def release_selected_holds(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    released = services.release_holds(queryset, now=timezone.now())
    modeladmin.message_user(request, f"Released {released} legal hold(s).", messages.SUCCESS)


@admin.register(LegalHold)
class LegalHoldAdmin(admin.ModelAdmin):
    list_display = ["__str__", "task_type", "owner", "task", "created_by", "created_at", "released_at"]
    list_filter = [("released_at", admin.EmptyFieldListFilter), "task_type"]
    search_fields = ["reason", "task_type", "=task__id", "owner__username"]
    raw_id_fields = ["task", "owner"]
    readonly_fields = ["created_by", "created_at"]
    actions = [release_selected_holds]

    def save_model(self, request: HttpRequest, obj: LegalHold, form: Any, change: bool) -> None:
        if not change and request.user.is_authenticated:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A hold is released, never deleted: its history is part of the record.
        return False


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

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}


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
