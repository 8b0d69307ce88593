"""Policy and hold validation (model and admin), the default policy, beat entries, migrations."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from retention.models import LegalHold, PolicyMode, RetentionPolicy

BAD_POLICIES: list[tuple[str, dict[str, Any], str]] = [
    ("no rule at all", {}, "__all__"),
    ("negative keep_for", {"keep_for": timedelta(days=-1)}, "keep_for"),
    ("negative result_ttl", {"result_ttl": timedelta(seconds=-1)}, "result_ttl"),
    ("keep_last zero", {"keep_last": 0}, "keep_last"),
    ("non-terminal status", {"status": "running", "keep_for": timedelta(days=1)}, "status"),
    ("unknown status", {"status": "archived", "keep_for": timedelta(days=1)}, "status"),
    ("unknown mode", {"mode": "dry", "keep_for": timedelta(days=1)}, "mode"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("case", "fields", "field"), BAD_POLICIES, ids=[c[0] for c in BAD_POLICIES])
def test_invalid_policies_are_rejected_naming_the_field(case: str, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        RetentionPolicy(task_type="t.x", **fields).full_clean()
    assert field in raised.value.message_dict, raised.value.message_dict


@pytest.mark.django_db
def test_valid_policies_pass_and_a_second_enabled_policy_for_one_scope_is_refused() -> None:
    RetentionPolicy(task_type="t.x", status="failed", keep_for=timedelta(0)).full_clean()
    RetentionPolicy(result_ttl=timedelta(0), mode=PolicyMode.SHADOW).full_clean()
    RetentionPolicy.objects.create(task_type="t.x", keep_last=5)
    with pytest.raises(ValidationError, match="Another enabled policy"):
        RetentionPolicy(task_type="t.x", keep_last=9).full_clean()
    RetentionPolicy(task_type="t.x", keep_last=9, enabled=False).full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        RetentionPolicy.objects.create(task_type="t.y")  # the database refuses a policy without a rule too


@pytest.mark.django_db
def test_a_legal_hold_must_name_a_task_an_owner_or_a_type() -> None:
    with pytest.raises(ValidationError, match="must name a task, an owner or a task type"):
        LegalHold(reason="no scope").full_clean()
    LegalHold(reason="type", task_type="t.x").full_clean()


@pytest.mark.django_db
def test_the_admin_shows_policy_validation_errors_and_records_the_editor(admin_client: Any, admin_user: Any) -> None:
    # when an invalid policy is submitted in the admin
    url = "/admin/retention/retentionpolicy/add/"
    form = {"task_type": "t.x", "status": "", "keep_for": "", "keep_last": "0", "result_ttl": "", "mode": "enforce"}
    response = admin_client.post(url, {**form, "enabled": "on"})

    # then the form comes back with the error and nothing is saved
    assert response.status_code == 200
    assert "Keep last must be at least 1" in response.content.decode()
    assert not RetentionPolicy.objects.filter(task_type="t.x").exists()

    # when a valid one is submitted, then it is saved with its editor
    response = admin_client.post(url, {**form, "keep_last": "10", "enabled": "on"})
    assert response.status_code == 302
    assert RetentionPolicy.objects.get(task_type="t.x").updated_by == admin_user


@pytest.mark.django_db
def test_audit_records_and_sweep_runs_are_read_only_in_the_admin(admin_client: Any) -> None:
    assert admin_client.get("/admin/retention/auditrecord/").status_code == 200
    assert admin_client.get("/admin/retention/auditrecord/add/").status_code == 403
    assert admin_client.get("/admin/retention/sweeprun/add/").status_code == 403
    assert admin_client.get("/admin/retention/legalhold/add/").status_code == 200


@pytest.mark.django_db
def test_migrations_create_the_default_policy_and_the_sweeps_beat_entries() -> None:
    from django_celery_beat.models import PeriodicTask

    default = RetentionPolicy.objects.get(task_type="", status="dead")
    assert (default.keep_for, default.keep_last, default.mode, default.enabled) == (
        timedelta(days=90),
        10_000,
        PolicyMode.ENFORCE,
        True,
    )
    tasks = set(PeriodicTask.objects.filter(enabled=True, interval__isnull=False).values_list("task", flat=True))
    assert {
        "retention.sweep_expired_tasks",
        "retention.sweep_expired_results",
        "retention.enforce_policies",
        "retention.sweep_orphans",
    } <= tasks
