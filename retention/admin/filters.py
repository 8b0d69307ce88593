"""List filters of retention's Task admin: by type, owner, own expiry, and what a policy would delete now."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from retention.models import RetentionPolicy
from retention.monitoring import reports
from retention.rules.policies import enabled_policies
from tasks_app import registry
from tasks_app.querysets import TaskQuerySet


class TaskTypeFilter(admin.SimpleListFilter):
    """Task types from the registry and the policies (no DISTINCT over the whole task table)."""

    title = "task type"
    parameter_name = "task_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(registry.names()) | {p.task_type for p in RetentionPolicy.objects.exclude(task_type="")}
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(task_type=self.value()) if self.value() else queryset


class OwnerFilter(admin.SimpleListFilter):
    """A text box for an owner's username or id (a list of every user would not fit)."""

    title = "owner"
    parameter_name = "owner"
    template = "admin/retention/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def choices(self, changelist: Any) -> Iterator[Any]:
        # The form resubmits the list's other filters and search as hidden fields.
        keep = [(k, v) for k, v in changelist.params.items() if k not in (self.parameter_name, "p")]
        yield {"hidden": keep, "value": self.value() or "", "name": self.parameter_name}

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        if value.isdigit():
            return queryset.filter(owner_id=int(value))
        return queryset.filter(owner__username=value)


class ExpiringFilter(admin.SimpleListFilter):
    """Live tasks whose own expiry falls within the next hour or day (or has passed)."""

    title = "own expiry"
    parameter_name = "expiring"
    WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24)}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("1h", "expiring within 1 h"), ("24h", "expiring within 24 h")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        window = self.WINDOWS.get(self.value() or "")
        tasks = cast(TaskQuerySet, queryset)
        return tasks.expiring_within(window, timezone.now()) if window else queryset


class DueByPolicyFilter(admin.SimpleListFilter):
    """Tasks a policy would delete now (the policy list links here)."""

    title = "would delete now, by policy"
    parameter_name = "due_by_policy"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (str(p.pk), f"#{p.pk} {p.scope_label}")
            for p in enabled_policies()
            if p.keep_for is not None or p.keep_last is not None
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        policies = enabled_policies()
        policy = next((p for p in policies if str(p.pk) == self.value()), None)
        if policy is None:
            return queryset.none()
        return queryset.filter(pk__in=reports.due_by_policy(policy, timezone.now(), policies).values("pk"))


class SweepOutcomeFilter(admin.SimpleListFilter):
    """Sweep runs that did something, that failed, or that found nothing to do (most of them)."""

    title = "outcome"
    parameter_name = "outcome"
    DID_SOMETHING = Q(claimed__gt=0) | Q(purged__gt=0) | Q(shadow__gt=0) | Q(objects_deleted__gt=0)
    FAILED = Q(failed__gt=0) | ~Q(errors=[])

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("did", "did something"), ("failed", "failed"), ("noop", "nothing to do")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "did":
            return queryset.filter(self.DID_SOMETHING | self.FAILED)
        if self.value() == "failed":
            return queryset.filter(self.FAILED)
        if self.value() == "noop":
            return queryset.exclude(self.DID_SOMETHING | self.FAILED)
        return queryset
