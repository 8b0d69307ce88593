"""Run in a subprocess on SQLite (the embedded mode): writers in threads (their own connections, as
separate processes would be) insert audit records while another thread seals; then everything is
sealed and verified. Prints one JSON line (test_seals.py)."""

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

from retention.audit import seals  # noqa: E402
from retention.models import AuditAction, AuditRecord, AuditSeal  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0)
    stop = time.monotonic() + 2
    errors: list[str] = []
    sealed = [0]

    def write() -> None:
        try:
            while time.monotonic() < stop:
                with transaction.atomic():
                    AuditRecord.objects.create(
                        task_id=uuid.uuid4(), task_type="t", action=AuditAction.TASK_PURGED, reason="expires_at"
                    )
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(repr(exc))
        finally:
            connection.close()

    def seal_often() -> None:
        try:
            while time.monotonic() < stop:
                sealed[0] += seals.seal(timezone.now()) is not None
                time.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=write) for _ in range(2)] + [threading.Thread(target=seal_often)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seals.seal(timezone.now())
    result = seals.verify(now=timezone.now() + timedelta(days=1))
    print(
        json.dumps(
            {
                "errors": errors,
                "records": AuditRecord.objects.count(),
                "sealed_records": sum(s.record_count for s in AuditSeal.objects.all()),
                "seals_while_writing": sealed[0],
                "problem": str(result.problem) if result.problem else None,
            }
        )
    )


main()
