"""Export the audit trail between two moments as CSV (streamed; safe to open in a spreadsheet)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retention.audit import export


def parse_moment(value: str, option: str, *, end_of_day: bool) -> datetime:
    """An ISO 8601 datetime with an offset, or a date (UTC midnight; the next one for --until)."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time.min, tzinfo=UTC)
        return start + timedelta(days=1) if end_of_day else start
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{option} {value!r} is not an ISO 8601 date or datetime (e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00)."
        ) from None
    if moment.tzinfo is None:
        raise CommandError(f"{option} {value!r} has no UTC offset; add one (e.g. +00:00 or Z) or give a date.")
    return moment


class Command(BaseCommand):
    help = (
        "Write audit records with --since <= occurred_at < --until as CSV (a date as --until includes that whole day)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", required=True, help="ISO 8601 datetime with offset, or a date (inclusive).")
        parser.add_argument(
            "--until", required=True, help="ISO 8601 datetime with offset (exclusive), or a date (inclusive)."
        )
        parser.add_argument("--output", help="Write to this file instead of standard output.")

    def handle(self, *args: Any, **options: Any) -> None:
        since = parse_moment(options["since"], "--since", end_of_day=False)
        until = parse_moment(options["until"], "--until", end_of_day=True)
        if since >= until:
            raise CommandError(f"--since {options['since']!r} must be before --until {options['until']!r}.")
        lines = export.export(since, until)
        if options["output"]:
            path = Path(options["output"])
            if not path.parent.is_dir():
                raise CommandError(f"--output {options['output']!r}: the folder {str(path.parent)!r} does not exist.")
            try:
                with path.open("w", encoding="utf-8", newline="") as out:
                    out.writelines(lines)
            except OSError as exc:
                raise CommandError(f"--output {options['output']!r}: {exc.strerror or exc}.") from None
        else:
            for line in lines:
                self.stdout.write(line, ending="")
