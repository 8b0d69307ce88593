"""Embedded mode (SQLite): three writers (several records a transaction, some rolled back, raw INSERT ... SELECT
among them) and two sealers at once; then every committed record must be in exactly one seal."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from retention.audit import seals, verification  # noqa: E402
from retention.models import AuditAction, AuditRecord, AuditSeal  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0)
    stop = time.monotonic() + 3
    errors: list[str] = []
    sealed = [0]

    def write(n: int) -> None:
        rounds = 0
        try:
            while time.monotonic() < stop:
                rounds += 1
                try:
                    with transaction.atomic():
                        for _ in range(2):
                            AuditRecord.objects.create(
                                task_id=uuid.uuid4(), task_type="t", action=AuditAction.TASK_PURGED, reason=f"w{n}"
                            )
                        with connection.cursor() as cursor:
                            cursor.execute(
                                "INSERT INTO retention_auditrecord (task_id, owner_id, task_type, action, reason, "
                                "objects_deleted, bytes_freed, occurred_at) SELECT task_id, owner_id, task_type, "
                                "action, 'copy', 0, 0, occurred_at FROM retention_auditrecord ORDER BY id DESC LIMIT 2"
                            )
                        if rounds % 3 == 0:
                            transaction.set_rollback(True)
                except Exception as exc:  # noqa: BLE001
                    if "locked" not in str(exc):
                        raise
                time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            connection.close()

    def seal_often() -> None:
        try:
            while time.monotonic() < stop:
                try:
                    sealed[0] += seals.seal(timezone.now()) is not None
                except Exception as exc:  # noqa: BLE001
                    if "locked" not in str(exc):
                        raise
                time.sleep(0.02)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=seal_often) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seals.seal_all(timezone.now())
    ids = set(AuditRecord.objects.values_list("pk", flat=True))
    covered: list[int] = []
    for seal_row in AuditSeal.objects.all():
        covered += [r.pk for r in seals.covered_records(seal_row)]
    result = verification.verify(now=timezone.now() + timedelta(days=1))
    print(
        json.dumps(
            {
                "errors": errors[:5],
                "records": len(ids),
                "covered": len(covered),
                "covered_unique": len(set(covered)),
                "missing": sorted(ids - set(covered))[:10],
                "sealed_records": sum(s.record_count for s in AuditSeal.objects.all()),
                "seals_while_writing": sealed[0],
                "problem": str(result.problem) if result.problem else None,
            }
        )
    )


main()
