"""Admin for tasks and their execution: browse and filter tasks with their attempt history, run again,
cancel or retry; the workers and their heartbeats; the execution console (queue, charts).

Machine-written rows (results, manifests, attempts, heartbeats) are read-only. Each action's
mutation is a service function (``actions.run_again``, ``cancel_task``, ``retry_dead``) tested
directly; the admin only collects the selection and tells the operator what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from tasks_app import actions, console, workers
from tasks_app.exceptions import ActionRefused
from tasks_app.models import (
    GONE_STATUSES,
    PENDING_STATUSES,
    StoredObject,
    Task,
    TaskAttempt,
    TaskResult,
    TaskStatus,
    WorkerHeartbeat,
)

# "Select all" across pages must not start an unbounded run in one request.
MAX_ACTION_TASKS = 500


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


class TaskAttemptInline(admin.TabularInline):
    """The task's attempt history: worker, start, end, outcome, and the error as written (preformatted)."""

    model = TaskAttempt
    extra = 0
    fields = ["attempt", "worker", "started_at", "finished_at", "outcome", "error"]
    readonly_fields = ["attempt", "worker", "started_at", "finished_at", "outcome", "error"]
    can_delete = False
    ordering = ["attempt"]
    template = "admin/tasks_app/task/attempts_inline.html"
    verbose_name_plural = "attempt history"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- Refresh ----------------------------------------------------------------------------------------


def refresh_context(request: HttpRequest) -> dict[str, Any]:
    """``?refresh=N`` (one of console.REFRESH_CHOICES seconds): the page reloads itself every N seconds."""
    return {"refresh": console.refresh_seconds(request.GET.get("refresh")), "refresh_choices": console.REFRESH_CHOICES}


def without_refresh(request: HttpRequest) -> dict[str, Any]:
    """Take ``refresh`` out of the query string (a change list would read it as a filter); return its context."""
    extra = refresh_context(request)
    if "refresh" in request.GET:
        query = request.GET.copy()
        query.pop("refresh")
        request.GET = query  # type: ignore[assignment]
        if "QUERY_STRING" in request.META:
            request.META["QUERY_STRING"] = query.urlencode()
    return extra


# --- Actions ------------------------------------------------------------------------------------------


def _selected(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> list[Task] | None:
    tasks = list(queryset.order_by("pk")[: MAX_ACTION_TASKS + 1])
    if len(tasks) > MAX_ACTION_TASKS:
        modeladmin.message_user(request, f"Select at most {MAX_ACTION_TASKS} tasks.", messages.ERROR)
        return None
    return tasks


def apply(
    modeladmin: Any, request: HttpRequest, tasks: list[Task], mutation: Callable[[Task], Any], done: str
) -> list[Any]:
    """Run ``mutation`` on each task; tell the operator how many it did and each refusal's reason."""
    results, refused = [], []
    for task in tasks:
        try:
            results.append(mutation(task))
        except ActionRefused as exc:
            refused.append(str(exc))
            continue
        modeladmin.log_change(request, task, done)
    if results:
        modeladmin.message_user(request, f"{done}: {len(results)} task(s).", messages.SUCCESS)
    for reason in refused[:10]:
        modeladmin.message_user(request, f"Refused. {reason}", messages.ERROR)
    if len(refused) > 10:
        modeladmin.message_user(request, f"… and {len(refused) - 10} more refused.", messages.ERROR)
    return results


@admin.action(description="Run again (as a new task)", permissions=["run_again"])
def run_again_action(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    tasks = _selected(modeladmin, request, queryset)
    if tasks is not None:
        now = timezone.now()
        for new in apply(modeladmin, request, tasks, lambda t: actions.run_again(t, now=now), "Ran again"):
            url = reverse("admin:tasks_app_task_change", args=[new.pk])
            modeladmin.message_user(request, format_html('New task <a href="{}">{}</a>.', url, new.pk))


@admin.action(description="Cancel (scheduled or queued)", permissions=["operate"])
def cancel_action(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    tasks = _selected(modeladmin, request, queryset)
    if tasks is not None:
        now = timezone.now()
        apply(modeladmin, request, tasks, lambda t: actions.cancel_task(t, now=now), "Cancelled")


@admin.action(description="Retry (dead tasks)", permissions=["operate"])
def retry_action(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    tasks = _selected(modeladmin, request, queryset)
    if tasks is not None:
        now = timezone.now()
        apply(modeladmin, request, tasks, lambda t: actions.retry_dead(t, now=now), "Retried")


EXECUTION_ACTIONS = [run_again_action, cancel_action, retry_action]


# --- Tasks --------------------------------------------------------------------------------------------


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
    inlines = [TaskAttemptInline, StoredObjectInline]
    list_select_related = ["owner"]
    show_full_result_count = False
    actions = EXECUTION_ACTIONS
    change_form_template = "admin/tasks_app/task/change_form.html"
    readonly_fields = ["error_text"]

    def has_run_again_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tasks_app.add_task")

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tasks_app.change_task")

    @admin.display(description="last error")
    def error_text(self, task: Task) -> str:
        # As written: a traceback's indentation is its structure.
        return format_html('<pre class="task-error">{}</pre>', task.error) if task.error else "-"

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        views = [("run-again", "run_again"), ("cancel", "cancel"), ("retry", "retry")]
        return [
            *(
                path(
                    f"<path:object_id>/{slug}/",
                    self.admin_site.admin_view(self._one_task_view(name)),
                    name=f"{prefix}_{name}",
                )
                for slug, name in views
            ),
            *super().get_urls(),
        ]

    def _one_task_view(self, name: str) -> Callable[..., HttpResponse]:
        def view(request: HttpRequest, object_id: str) -> HttpResponse:
            return self.one_task_action(request, object_id, name)

        return view

    def one_task_action(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        """A task page's button (POST): the action on that one task, then back to the task."""
        task = self.get_object(request, object_id)
        if task is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]
        allowed = self.has_run_again_permission if name == "run_again" else self.has_operate_permission
        if not allowed(request):
            raise PermissionDenied
        back = HttpResponseRedirect(reverse("admin:tasks_app_task_change", args=[task.pk]))
        if request.method != "POST":
            return back
        action = {"run_again": run_again_action, "cancel": cancel_action, "retry": retry_action}[name]
        action(self, request, Task.objects.filter(pk=task.pk))
        return back

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **refresh_context(request)})

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Task | None = None,
    ) -> Any:
        context["execution_buttons"] = self.execution_buttons(request, obj) if obj is not None else []
        return super().render_change_form(request, context, add, change, form_url, obj)

    def execution_buttons(self, request: HttpRequest, task: Task) -> list[tuple[str, str, str]]:
        """The actions that apply to ``task`` now: (css class, url, label)."""
        if task.status in GONE_STATUSES or (task.expires_at is not None and task.expires_at <= timezone.now()):
            return []
        buttons = []
        if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED):
            if self.has_run_again_permission(request):
                buttons.append(("task-run-again", "admin:tasks_app_task_run_again", "Run again"))
        if self.has_operate_permission(request):
            if task.status in PENDING_STATUSES:
                buttons.append(("task-cancel", "admin:tasks_app_task_cancel", "Cancel"))
            if task.status == TaskStatus.DEAD:
                buttons.append(("task-retry", "admin:tasks_app_task_retry", "Retry"))
        return [(css, reverse(name, args=[task.pk]), label) for css, name, label in buttons]


@admin.register(TaskResult)
class TaskResultAdmin(ReadOnlyAdmin):
    list_display = ["task", "created_at"]
    raw_id_fields = ["task"]


@admin.register(StoredObject)
class StoredObjectAdmin(ReadOnlyAdmin):
    list_display = ["key", "kind", "size", "task", "created_at"]
    list_filter = ["kind"]
    search_fields = ["key"]


# --- Workers and the execution console ------------------------------------------------------------------


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(ReadOnlyAdmin):
    """Workers with their heartbeats (gone ones marked); the execution console hangs off it."""

    list_display = ["hostname", "worker_state", "last_beat", "pool_size", "queue_names", "running_now", "started_at"]
    list_display_links = ["hostname"]
    ordering = ["hostname"]
    change_list_template = "admin/tasks_app/workerheartbeat/change_list.html"
    list_per_page = 100

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(last_beat_at__gte=timezone.now() - workers.FORGET_AFTER)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        now = timezone.now()
        found = workers.counts(now)
        return super().changelist_view(request, {**(extra_context or {}), **without_refresh(request), **found})

    @admin.display(description="state")
    def worker_state(self, row: WorkerHeartbeat) -> str:
        state = workers.state(row, timezone.now())
        return format_html('<span class="worker-state worker-{}">{}</span>', state, state)

    @admin.display(description="last beat", ordering="last_beat_at")
    def last_beat(self, row: WorkerHeartbeat) -> str:
        ago = console.duration_text(timezone.now() - row.last_beat_at)
        return format_html("{}<br><small>{} ago</small>", f"{row.last_beat_at:%Y-%m-%d %H:%M:%S}", ago)

    @admin.display(description="pool")
    def pool_size(self, row: WorkerHeartbeat) -> str:
        return f"{row.pool} × {row.concurrency}" if row.pool else str(row.concurrency)

    @admin.display(description="queues")
    def queue_names(self, row: WorkerHeartbeat) -> str:
        return ", ".join(row.queues or [])

    @admin.display(description="running now")
    def running_now(self, row: WorkerHeartbeat) -> str:
        if not row.running:
            return "idle" if row.stopped_at is None else "-"
        links = format_html_join(
            " ",
            '<a class="running-task" href="{}" title="{}">{}…</a>',
            ((reverse("admin:tasks_app_task_change", args=[i]), i, i[:8]) for i in row.running_ids[:5]),
        )
        more = f" +{row.running - 5}" if row.running > 5 else ""
        return format_html("{} task(s): {}{}", row.running, links, more)

    def get_urls(self) -> list[Any]:
        return [
            path("execution/", self.admin_site.admin_view(self.execution_view), name="tasks_app_execution"),
            *super().get_urls(),
        ]

    def execution_view(self, request: HttpRequest) -> TemplateResponse:
        """The queue, the workers, and throughput, failures and runtime over the last hour or 48 hours."""
        if not request.user.has_perm("tasks_app.view_task"):
            raise PermissionDenied
        win = console.window(request.GET.get("window"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Execution",
            "opts": self.opts,
            **refresh_context(request),
            **console.context(timezone.now(), win),
        }
        return TemplateResponse(request, "admin/tasks_app/execution.html", context)
