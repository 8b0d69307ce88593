"""Admin for tasks: browse and filter; results and manifests are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from tasks_app.models import StoredObject, Task, TaskResult


class ReadOnlyAdmin(admin.ModelAdmin):
    """Machine-written rows: no add, change or delete from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StoredObjectInline(admin.TabularInline):
    model = StoredObject
    extra = 0
    fields = ["kind", "key", "size", "created_at"]
    readonly_fields = ["kind", "key", "size", "created_at"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "task_type",
        "status",
        "owner",
        "created_at",
        "run_at",
        "finished_at",
        "expires_at",
        "attempts",
    ]
    list_filter = ["status", "task_type"]
    search_fields = ["=id", "task_type", "owner__username", "idempotency_key"]
    date_hierarchy = "created_at"
    inlines = [StoredObjectInline]
    list_select_related = ["owner"]
    show_full_result_count = False


@admin.register(TaskResult)
class TaskResultAdmin(ReadOnlyAdmin):
    list_display = ["task", "created_at"]
    raw_id_fields = ["task"]


@admin.register(StoredObject)
class StoredObjectAdmin(ReadOnlyAdmin):
    list_display = ["key", "kind", "size", "task", "created_at"]
    list_filter = ["kind"]
    search_fields = ["key"]
