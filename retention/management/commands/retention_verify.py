"""Re-check the audit seals: every record and seal intact, the chain unbroken, the signatures valid."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from retention.audit import verification
from retention.management.commands.retention_report import parse_moment


class Command(BaseCommand):
    help = (
        "Recompute the audit seals sealed in [--since, --until) against the records; exit 0 only when all holds, "
        "else name the first record or seal changed, removed or inserted. --export DIR also writes audit.csv and "
        "seals.jsonl for the stand-alone verifier (retention/audit/chain.py)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help="ISO 8601 datetime with offset, or a date (inclusive).")
        parser.add_argument("--until", help="ISO 8601 datetime with offset, or a date (inclusive of that day).")
        parser.add_argument("--export", metavar="DIR", help="Write audit.csv and seals.jsonl of those seals here.")

    def handle(self, *args: Any, **options: Any) -> None:
        since = options["since"] and parse_moment(options["since"], "--since", end_of_day=False)
        until = options["until"] and parse_moment(options["until"], "--until", end_of_day=True)
        if since and until and since >= until:
            raise CommandError(f"--since {options['since']!r} must be before --until {options['until']!r}.")
        result = verification.verify(since or None, until or None, now=timezone.now())
        if result.problem:
            raise CommandError(f"audit trail NOT intact: {result.problem}")
        self.stdout.write(f"audit trail intact: {result.seals} seals, {result.records} records verified")
        if options["export"]:
            written = verification.export(options["export"], since or None, until or None)
            self.stdout.write(f"exported {written} seals to {options['export']}")
