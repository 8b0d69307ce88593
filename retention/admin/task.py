"""Retention's view of tasks in the admin: "deletes at", the deciding rule, purge now and legal holds.

tasks_app never imports retention, so retention/admin.py replaces tasks_app's TaskAdmin with
the subclass below. The mutations behind its actions (``purge_tasks``, ``hold_tasks``) are
plain functions over the one purge path and the one hold path, tested directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from retention import services
from retention.admin.filters import DueByPolicyFilter, ExpiringFilter, OwnerFilter, TaskTypeFilter
from retention.admin.seal import receipt_link
from retention.exceptions import TaskOnLegalHold
from retention.models import LegalHold, PendingDeletion
from retention.monitoring import reports
from retention.storage import objects
from tasks_app.admin import EXECUTION_ACTIONS, TaskAdmin
from tasks_app.models import GONE_STATUSES, Task, TaskStatus

logger = logging.getLogger(__name__)

# "Select all" across pages must not start an unbounded purge in one request.
MAX_ACTION_TASKS = 500


@dataclass
class PurgeOutcome:
    """What ``purge_tasks`` did, per task id."""

    purged: list[Any] = field(default_factory=list)
    deferred: list[Any] = field(default_factory=list)  # running, or objects left for the tasks sweep
    held: list[Any] = field(default_factory=list)


def purge_tasks(task_ids: Iterable[Any], *, now: datetime) -> PurgeOutcome:
    """Erase each task now through ``purge_now`` (audited ``user_erasure``); held tasks are skipped."""
    outcome = PurgeOutcome()
    for task_id in task_ids:
        try:
            gone = services.purge_now(task_id, now=now)
        except TaskOnLegalHold:
            outcome.held.append(task_id)
        except Task.DoesNotExist:
            continue
        else:
            (outcome.purged if gone else outcome.deferred).append(task_id)
    return outcome


def hold_tasks(tasks: Iterable[Task], *, reason: str, created_by: Any) -> list[LegalHold]:
    """Place one legal hold per task not yet deleted, with who and why; tombstones are skipped.

    A task being purged is held too: the hold stops its purge at the next step, and keeps
    everything not already handed to storage (see ``hold_message``).
    """
    return [
        services.hold(task=task, reason=reason, created_by=created_by)
        for task in tasks
        if task.status != TaskStatus.EXPIRED
    ]


def hold_message(tasks: list[Task], holds: list[LegalHold]) -> tuple[str, int]:
    """The message (and its level) telling the operator what ``hold_tasks`` did.

    Read after the holds committed, when the fence has settled each task's fate: a task being
    deleted (claimed, or with keys decided for deletion) keeps everything not yet handed to
    storage; one whose purge finished while the hold waited for it is gone.
    """
    ids = [task.pk for task in tasks]
    statuses = dict(Task.objects.filter(pk__in=ids).values_list("pk", "status"))
    skipped = len([task for task in tasks if task.status == TaskStatus.EXPIRED])
    held_ids = {legal_hold.task_id for legal_hold in holds if legal_hold.task_id is not None}
    finished = len([pk for pk in held_ids if statuses.get(pk) == TaskStatus.EXPIRED])
    decided = set(PendingDeletion.objects.filter(task_id__in=list(held_ids)).values_list("task_id", flat=True))
    deleting = len([pk for pk in held_ids if statuses.get(pk) == TaskStatus.PURGING or pk in decided])
    if not holds:
        return "No hold placed: the selected tasks' data is already deleted.", messages.ERROR
    parts = [f"Placed {len(holds)} legal hold(s)."]
    if deleting:
        parts.append(
            f"{deleting} of these tasks were being deleted: everything not yet deleted is kept; objects already "
            f"handed to storage (at most {objects.DELETE_BATCH} per task) are deleted and audited as partial purge."
        )
    if finished:
        parts.append(f"{finished} had been deleted before the hold took effect: only their billing record is left.")
    if skipped:
        parts.append(f"{skipped} skipped: their data is already deleted.")
    return " ".join(parts), messages.WARNING if deleting or finished or skipped else messages.SUCCESS


# --- Display -----------------------------------------------------------------------------------------


def rule_text(deadline: reports.Deadline) -> str:
    """The deciding rule in words: own expiry, policy #id age, count cap (policy #id)."""
    if deadline.reason == "expires_at":
        return "own expiry"
    if deadline.reason == "count_cap" and deadline.policy is not None:
        return f"count cap of policy #{deadline.policy.pk} (keep last {deadline.policy.keep_last})"
    if deadline.reason.startswith("policy:") and deadline.policy is not None:
        return f"age limit of policy #{deadline.policy.pk} (keep for {deadline.policy.keep_for})"
    return deadline.reason or "no rule"


def holds_html(task: Task) -> str:
    """Links to the active legal holds covering ``task``."""
    holds = LegalHold.objects.active().covering(task).order_by("pk")[:10]
    return format_html_join(
        ", ",
        '<a href="{}">legal hold #{}</a> ({})',
        ((reverse("admin:retention_legalhold_change", args=[h.pk]), h.pk, h.reason[:60]) for h in holds),
    )


def deletes_at_html(task: Task, deadline: reports.Deadline) -> str:
    """The "deletes at" cell: when, or why never."""
    if task.status in GONE_STATUSES:
        return format_html("deleted {}", _when(deadline.at)) if deadline.at else mark_safe("<em>purging</em>")
    if deadline.held:
        return mark_safe('<span class="retention-held">held</span>')
    if deadline.at is None:
        return format_html("<em>never</em>")
    return format_html(
        '<span class="deletes-at" title="{}" style="white-space: nowrap">{}</span><br><small>{}</small>',
        rule_text(deadline),
        _when(deadline.at),
        short_rule(deadline),
    )


def short_rule(deadline: reports.Deadline) -> str:
    """The deciding rule in a few words, for the list."""
    if deadline.policy is None:
        return "own expiry" if deadline.reason == "expires_at" else ""
    return f"{'count cap' if deadline.reason == 'count_cap' else 'age'}, policy #{deadline.policy.pk}"


def _when(moment: datetime | None, *, utc: bool = True) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}{' UTC' if utc else ''}"


def retention_html(task: Task, now: datetime) -> str:
    """The change page's line: effective deletion time and the rule (or the hold) deciding it."""
    deadline = reports.deadline(task, now)
    if task.status in GONE_STATUSES:
        return format_html(
            "Data {} ({}); this task is read-only.{}",
            f"deleted at {_when(deadline.at)}" if deadline.at else "being purged",
            deadline.reason or "no reason recorded",
            format_html(" Its {}.", receipt_link(task.pk)) if task.status == TaskStatus.EXPIRED else "",
        )
    if deadline.held:
        return format_html("Never while held: blocked by {}.", holds_html(task))
    if deadline.at is None:
        return "Never: no expiry and no policy with an age limit or count cap decides this task."
    overdue = " (overdue: the next sweep deletes it)" if deadline.at <= now else ""
    return format_html("{}{}, by {}.", _when(deadline.at), overdue, rule_text(deadline))


# --- The Task admin, extended ----------------------------------------------------------------------


def _selected(queryset: QuerySet) -> list[Task] | None:
    tasks = list(queryset.order_by("pk")[: MAX_ACTION_TASKS + 1])
    return None if len(tasks) > MAX_ACTION_TASKS else tasks


def purge_message(outcome: PurgeOutcome) -> tuple[str, int]:
    """The message (and its level) telling the operator what ``purge_tasks`` did."""
    parts = [f"Purged {len(outcome.purged)} task(s) (audited as user erasure)."]
    if outcome.deferred:
        parts.append(f"{len(outcome.deferred)} will be purged when they finish or by the next tasks sweep.")
    if outcome.held:
        parts.append(f"{len(outcome.held)} skipped: under a legal hold.")
    return " ".join(parts), messages.WARNING if outcome.held or outcome.deferred else messages.SUCCESS


@admin.action(description="Purge now (audited erasure)", permissions=["purge"])
def purge_now_action(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> Any:
    tasks = _selected(queryset)
    if tasks is None:
        modeladmin.message_user(request, f"Select at most {MAX_ACTION_TASKS} tasks to purge.", messages.ERROR)
        return None
    if request.POST.get("confirm") != "yes":
        return modeladmin.confirm_page(request, "purge", tasks)
    outcome = purge_tasks([t.pk for t in tasks if t.status not in GONE_STATUSES], now=timezone.now())
    modeladmin.message_user(request, *purge_message(outcome))
    return None


@admin.action(description="Place legal hold", permissions=["hold"])
def place_legal_hold_action(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> Any:
    tasks = _selected(queryset)
    if tasks is None:
        modeladmin.message_user(request, f"Select at most {MAX_ACTION_TASKS} tasks to hold.", messages.ERROR)
        return None
    reason = request.POST.get("reason", "").strip()
    if request.POST.get("confirm") != "yes" or not reason:
        return modeladmin.confirm_page(request, "hold", tasks, missing_reason="confirm" in request.POST)
    holds = hold_tasks(tasks, reason=reason, created_by=request.user)
    modeladmin.message_user(request, *hold_message(tasks, holds))
    return None


class RetentionTaskAdmin(TaskAdmin):
    """tasks_app's TaskAdmin plus when each task's data is deleted, by which rule, and the two actions."""

    list_display = ["short_id", "task_type", "status", "owner", "finished", "deletes_at"]
    list_display_links = ["short_id"]
    list_filter = ["status", TaskTypeFilter, OwnerFilter, ExpiringFilter, DueByPolicyFilter]
    search_fields = ["=id"]
    search_help_text = "Search by task id (exact UUID)."
    date_hierarchy = None  # type: ignore[assignment]  # its DISTINCT over every task's date would not stay fast
    list_per_page = 50
    actions = [*EXECUTION_ACTIONS, purge_now_action, place_legal_hold_action]
    change_form_template = "admin/retention/task_change_form.html"
    fieldsets = [
        ("Retention", {"fields": ["retention", "legal_holds"]}),
        ("Task", {"fields": ["id", "task_type", "status", "final_status", "owner", "expires_at", "expired_at"]}),
        (
            "Details",
            {
                "classes": ["collapse"],
                "fields": [
                    "created_at",
                    "run_at",
                    "started_at",
                    "finished_at",
                    "result_ttl",
                    "result_expires_at",
                    "attempts",
                    "max_attempts",
                    "payload",
                    "usage",
                    "error_text",
                ],
            },
        ),
    ]
    readonly_fields = ["retention", "legal_holds", "error_text"]

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("tasks_app.delete_task")

    def has_hold_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("retention.add_legalhold")

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # One deadline query set for the page, not a few queries per row.
        changelist.result_list = list(changelist.result_list)
        found = reports.deadlines(changelist.result_list, timezone.now())
        for task in changelist.result_list:
            task.retention_deadline = found[task.pk]
        return changelist

    @admin.display(description="id", ordering="id")
    def short_id(self, task: Task) -> str:
        # The full UUID would wrap over four lines; the title and the page keep it whole.
        return format_html('<span class="task-id" title="{}">{}…</span>', task.pk, str(task.pk)[:8])

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, task: Task) -> str:
        return _when(task.finished_at, utc=False) or "-"

    @admin.display(description="deletes at")
    def deletes_at(self, task: Task) -> str:
        deadline = getattr(task, "retention_deadline", None) or reports.deadline(task, timezone.now())
        return deletes_at_html(task, deadline)

    @admin.display(description="deletion")
    def retention(self, task: Task) -> str:
        return retention_html(task, timezone.now())

    @admin.display(description="active legal holds")
    def legal_holds(self, task: Task) -> str:
        return holds_html(task) or "none"

    def get_urls(self) -> list[Any]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/purge/", self.admin_site.admin_view(self.purge_view), name=f"{prefix}_purge"),
            path("<path:object_id>/hold/", self.admin_site.admin_view(self.hold_view), name=f"{prefix}_hold"),
            *super().get_urls(),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Task | None = None,
    ) -> Any:
        live = obj is not None and obj.status not in GONE_STATUSES
        context["can_purge"] = live and self.has_purge_permission(request)
        # A task being purged can still be held: the hold keeps what is not yet deleted.
        context["can_hold"] = obj is not None and obj.status != TaskStatus.EXPIRED and self.has_hold_permission(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def purge_view(self, request: HttpRequest, object_id: str) -> Any:
        return self._one_task(request, object_id, "purge", purge_now_action, self.has_purge_permission)

    def hold_view(self, request: HttpRequest, object_id: str) -> Any:
        return self._one_task(request, object_id, "hold", place_legal_hold_action, self.has_hold_permission)

    def _one_task(self, request: HttpRequest, object_id: str, kind: str, action: Any, allowed: Any) -> Any:
        """A task page's button: the action's confirmation page, then the action on that one task."""
        task = self.get_object(request, object_id)
        if task is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)  # type: ignore[attr-defined]
        if not allowed(request):
            raise PermissionDenied
        change_url = reverse("admin:tasks_app_task_change", args=[task.pk])
        if task.status == TaskStatus.EXPIRED or (kind == "purge" and task.status in GONE_STATUSES):
            self.message_user(request, "This task's data is deleted: it is read-only.", messages.ERROR)
            return HttpResponseRedirect(change_url)
        if request.method != "POST":
            return self.confirm_page(request, kind, [task], single=True)
        return action(self, request, Task.objects.filter(pk=task.pk)) or HttpResponseRedirect(change_url)

    def confirm_page(self, request: HttpRequest, kind: str, tasks: list[Task], **extra: Any) -> TemplateResponse:
        """The intermediate page of both actions: the tasks, and for a hold the reason."""
        gone = [t for t in tasks if t.status in (GONE_STATUSES if kind == "purge" else [TaskStatus.EXPIRED])]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Purge these tasks now?" if kind == "purge" else "Place a legal hold on these tasks?",
            "kind": kind,
            "tasks": tasks,
            "gone": gone,
            "action": "purge_now_action" if kind == "purge" else "place_legal_hold_action",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "reason": request.POST.get("reason", ""),
            **extra,
        }
        return TemplateResponse(request, "admin/retention/task_confirm.html", context)
