"""Print a purged task's deletion receipt as JSON (the API's /api/v1/tasks/<id>/receipt/)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from retention.audit import receipts


class Command(BaseCommand):
    help = (
        "Print the deletion receipt of a purged task: its audit records, the seals covering them with inclusion "
        "proofs, and a fresh listing of its storage prefix."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_id", help="The task's id (UUID).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            task_id = uuid.UUID(options["task_id"])
        except ValueError as exc:
            raise CommandError(f"task_id {options['task_id']!r} is not a UUID") from exc
        try:
            receipt = receipts.build(task_id, now=timezone.now())
        except (receipts.NotDeletedYet, receipts.NoSuchDeletion) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(receipt, indent=2))
