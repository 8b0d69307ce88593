"""Audit records: what each deletion (or shadow decision) writes, and the claim reasons they decode."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from retention.choices import AuditAction, Reason
from retention.models import AuditRecord


@dataclass(frozen=True)
class DecodedReason:
    """A claim's ``purge_reason`` split into what the audit record says."""

    action: str
    reason: str
    policy_id: int | None
    # The policy table's version when the claim was decided (see ``policy_claim``).
    policies_version: int | None = None


def decode_purge_reason(purge_reason: str) -> DecodedReason:
    """Map a task's ``purge_reason`` (``expires_at``, ``user_request``, ``policy:<id>``, ``count_cap:<id>``,
    the last two optionally followed by ``@<policies version>``)."""
    if purge_reason == Reason.USER_REQUEST:
        return DecodedReason(AuditAction.USER_ERASURE, Reason.USER_REQUEST, None)
    reason, _, version = purge_reason.partition("@")
    if reason.startswith(Reason.POLICY_PREFIX):
        policy_id = _int_or_none(reason.split(":", 1)[1])
        return DecodedReason(AuditAction.TASK_PURGED, reason, policy_id, _int_or_none(version))
    if reason.startswith(f"{Reason.COUNT_CAP}:"):
        policy_id = _int_or_none(reason.split(":", 1)[1])
        return DecodedReason(AuditAction.TASK_PURGED, Reason.COUNT_CAP, policy_id, _int_or_none(version))
    return DecodedReason(AuditAction.TASK_PURGED, purge_reason or Reason.EXPIRES_AT, None)


def policy_claim(reason: str, version: int) -> str:
    """A policy claim's ``purge_reason``: the rule's reason and the policy table's version it was decided under.

    The purge decides again when the version differs by then (any write to the table bumps it,
    see policies.version), by equality rather than by comparing clocks.
    """
    return f"{reason}@{version}"


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def age_reason(policy_id: int) -> str:
    """The claim and audit reason of a policy's age limit (``policy:<id>``)."""
    return f"{Reason.POLICY_PREFIX}{policy_id}"


def count_cap_reason(policy_id: int) -> str:
    """The claim reason of a count-cap deletion (``count_cap:<id>``; audited as ``count_cap`` with the id)."""
    return f"{Reason.COUNT_CAP}:{policy_id}"


@dataclass(frozen=True)
class Subject:
    """Whose data a record is about: the task (an id from a key prefix if it is gone), owner and type."""

    task_id: UUID | None
    owner_id: int | None
    task_type: str


def _record(
    subject: Subject,
    *,
    action: str,
    reason: str,
    objects_deleted: int,
    bytes_freed: int,
    occurred_at: datetime,
    sweep_run_id: int | None,
    policy_id: int | None = None,
) -> AuditRecord:
    return AuditRecord(
        task_id=subject.task_id,
        owner_id=subject.owner_id,
        task_type=subject.task_type,
        action=action,
        reason=reason,
        policy_id=policy_id,
        objects_deleted=objects_deleted,
        bytes_freed=bytes_freed,
        occurred_at=occurred_at,
        sweep_run_id=sweep_run_id,
    )


def task_record(
    subject: Subject, purge_reason: str, objects_deleted: int, bytes_freed: int, now: datetime, run_id: int | None
) -> AuditRecord:
    """The (unsaved) record of one task's purge, its action and reason decoded from the claim's."""
    decoded = decode_purge_reason(purge_reason)
    return _record(
        subject,
        action=decoded.action,
        reason=decoded.reason,
        policy_id=decoded.policy_id,
        objects_deleted=objects_deleted,
        bytes_freed=bytes_freed,
        occurred_at=now,
        sweep_run_id=run_id,
    )


def partial_record(subject: Subject, purge_reason: str, tally: Any, now: datetime, run_id: int | None) -> AuditRecord:
    """The (unsaved) record of objects deleted before a hold or a policy change stopped a purge.

    ``purge_reason``: the claim's (a result purge passes ``result_ttl``); ``tally``: objects and bytes.
    """
    decoded = decode_purge_reason(purge_reason)
    return _record(
        subject,
        action=AuditAction.PARTIAL_PURGE,
        reason=decoded.reason,
        policy_id=decoded.policy_id,
        objects_deleted=tally.objects,
        bytes_freed=tally.bytes,
        occurred_at=now,
        sweep_run_id=run_id,
    )


def result_record(
    subject: Subject, objects_deleted: int, bytes_freed: int, now: datetime, run_id: int | None
) -> AuditRecord:
    """The (unsaved) record of one task's result purge (result TTL)."""
    return _record(
        subject,
        action=AuditAction.RESULT_PURGED,
        reason=Reason.RESULT_TTL,
        objects_deleted=objects_deleted,
        bytes_freed=bytes_freed,
        occurred_at=now,
        sweep_run_id=run_id,
    )


def result_records_from(rows: str, now: datetime, run_id: int | None) -> tuple[str, list[Any]]:
    """SQL inserting one ``result_purged`` record per row of ``rows`` (id, owner_id, task_type).

    The set-based twin of ``result_record``, for a statement that deletes and audits together.
    """
    table = AuditRecord._meta.db_table
    columns = "task_id, owner_id, task_type, action, reason, objects_deleted, bytes_freed, occurred_at, sweep_run_id"
    # A table name and a CTE name of ours; the values are parameters.
    sql = f"INSERT INTO {table} ({columns}) SELECT id, owner_id, task_type, %s, %s, 0, 0, %s, %s FROM {rows}"  # noqa: S608
    return sql, [AuditAction.RESULT_PURGED, Reason.RESULT_TTL, now, run_id]


def orphan_record(
    subject: Subject, objects_deleted: int, bytes_freed: int, now: datetime, run_id: int | None
) -> AuditRecord:
    """The (unsaved) record of one task's orphaned objects deleted."""
    return _record(
        subject,
        action=AuditAction.ORPHAN_DELETED,
        reason=Reason.ORPHAN,
        objects_deleted=objects_deleted,
        bytes_freed=bytes_freed,
        occurred_at=now,
        sweep_run_id=run_id,
    )


def shadow_record(
    subject: Subject,
    *,
    reason: str,
    policy_id: int,
    objects_deleted: int,
    bytes_freed: int,
    now: datetime,
    run_id: int | None,
) -> AuditRecord:
    """The (unsaved) record of a deletion a shadow policy would have made."""
    return _record(
        subject,
        action=AuditAction.SHADOW_WOULD_PURGE,
        reason=reason,
        policy_id=policy_id,
        objects_deleted=objects_deleted,
        bytes_freed=bytes_freed,
        occurred_at=now,
        sweep_run_id=run_id,
    )
