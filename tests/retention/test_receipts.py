"""Deletion receipts: for a task purged by each path, the records, their sealed proofs and an empty prefix."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from retention import conf, services
from retention.audit import chain, seals
from retention.models import AuditAction, RetentionPolicy
from retention.sweeping import sweeps
from tasks_app.models import TaskStatus
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.usefixtures("empty_bucket", "no_default_policy", "no_missing_task_wait")


def _expiry(make_task: Any, owner: Any) -> tuple[uuid.UUID, str, str]:
    task = make_task(owner=owner, expires_at=timezone.now() - timedelta(minutes=1), files={"out/a.txt": b"abc"})
    sweeps.sweep_tasks(timezone.now())
    return task.pk, AuditAction.TASK_PURGED, "expires_at"


def _policy(make_task: Any, owner: Any) -> tuple[uuid.UUID, str, str]:
    policy = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=1))
    task = make_task("t.ocr", owner=owner, finished_at=timezone.now() - timedelta(days=2), files={"out/a.txt": b"a"})
    sweeps.sweep_policies(timezone.now())
    return task.pk, AuditAction.TASK_PURGED, f"policy:{policy.pk}"


def _count_cap(make_task: Any, owner: Any) -> tuple[uuid.UUID, str, str]:
    RetentionPolicy.objects.create(task_type="t.ocr", keep_last=1)
    now = timezone.now()
    old = make_task("t.ocr", owner=owner, finished_at=now - timedelta(minutes=5), files={"out/a.txt": b"a"})
    make_task("t.ocr", owner=owner, finished_at=now)
    sweeps.sweep_policies(now)
    return old.pk, AuditAction.TASK_PURGED, "count_cap"


def _user_erasure(make_task: Any, owner: Any) -> tuple[uuid.UUID, str, str]:
    task = make_task(owner=owner, files={"out/a.txt": b"abc"}, result={"r": 1})
    services.purge_now(task)
    return task.pk, AuditAction.USER_ERASURE, "user_request"


def _orphan(make_task: Any, owner: Any) -> tuple[uuid.UUID, str, str]:
    tombstone = make_task(owner=owner, status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    default_storage.save(f"{task_prefix(tombstone.pk)}out/left.txt", ContentFile(b"12345"))
    sweeps.sweep_orphans(timezone.now() + conf.orphan_grace() + timedelta(minutes=1))
    return tombstone.pk, AuditAction.ORPHAN_DELETED, "orphan"


PATHS: dict[str, Callable[[Any, Any], tuple[uuid.UUID, str, str]]] = {
    "expiry": _expiry,
    "policy": _policy,
    "count cap": _count_cap,
    "user erasure": _user_erasure,
    "orphan": _orphan,
}


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _check(receipt: dict[str, Any], action: str, reason: str) -> None:
    _, keys = conf.seal_keys()
    records = receipt["audit_records"]
    assert [(r["action"], r["reason"]) for r in records] == [(action, reason)]
    for record in records:
        proof = record["proof"]
        leaf = chain.leaf_hash(record["sealed_cells"])
        assert proof["leaf_hash"] == leaf.hex()
        seal = proof["seal"]
        assert chain.check_seal_chain([seal], keys, previous=None) is None
        path = [bytes.fromhex(h) for h in proof["inclusion_proof"]]
        root = bytes.fromhex(seal["merkle_root"])
        assert chain.verify_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path, root)
    assert receipt["storage_listing"]["objects"] == 0
    assert receipt["storage_listing"]["prefix"] == task_prefix(receipt["task_id"])


@pytest.mark.django_db
@pytest.mark.parametrize("path", list(PATHS))
def test_a_receipt_for_a_task_purged_by_each_path_verifies(path: str, make_task: Any, make_user: Any) -> None:
    owner = make_user("alice")
    task_id, action, reason = PATHS[path](make_task, owner)
    seals.seal(timezone.now())

    response = _client(owner).get(f"/api/v1/tasks/{task_id}/receipt/")

    assert response.status_code == 200, response.content
    _check(response.json(), action, reason)
    out = io.StringIO()
    call_command("retention_receipt", str(task_id), stdout=out)
    _check(json.loads(out.getvalue()), action, reason)


@pytest.mark.django_db
def test_a_receipt_is_for_the_owner_and_auditors_only_and_only_once_deleted(make_task: Any, make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    auditor = make_user("auditor", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="view_auditrecord"))
    live = make_task(owner=alice)
    assert _client(alice).get(f"/api/v1/tasks/{live.pk}/receipt/").status_code == 409
    with pytest.raises(CommandError, match="not deleted yet"):
        call_command("retention_receipt", str(live.pk), stdout=io.StringIO())

    services.purge_now(live)
    assert _client(bob).get(f"/api/v1/tasks/{live.pk}/receipt/").status_code == 404
    assert _client(make_user("staff", is_staff=True)).get(f"/api/v1/tasks/{live.pk}/receipt/").status_code == 404
    # before the next seal the records are there, their proof not yet
    unsealed = _client(auditor).get(f"/api/v1/tasks/{live.pk}/receipt/").json()
    assert [r["proof"]["seal"] for r in unsealed["audit_records"]] == [None]
    assert _client(alice).get(f"/api/v1/tasks/{uuid.uuid4()}/receipt/").status_code == 404
    with pytest.raises(CommandError, match="not a UUID"):
        call_command("retention_receipt", "nope", stdout=io.StringIO())
