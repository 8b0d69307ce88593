"""Run retention sweeps in this process (no worker needed), like the beat entries do on the fleet."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from retention.management.progress import progress_bar
from retention.models import SweepKind, SweepRun
from retention.monitoring import reports
from retention.sweeping import sweeps


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--limit must be a positive integer, got {value!r}")
    return number


def describe(run: SweepRun) -> str:
    text = (
        f"{run.kind}: claimed {run.claimed}, purged {run.purged}, failed {run.failed}, shadow {run.shadow}, "
        f"objects {run.objects_deleted}, bytes {run.bytes_freed}"
    )
    if run.missing_objects:
        text += f", manifest objects missing {run.missing_objects}"
    return f"{text} (sweep run {run.pk})"


class Command(BaseCommand):
    help = "Run retention sweeps now, in this process, and print what they did."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--kind", choices=[*SweepKind.values, "all"], default="all", help="Which sweep (default all)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; change nothing.")
        parser.add_argument("--limit", type=positive_int, help="Handle at most N items per sweep.")

    def handle(self, *args: Any, **options: Any) -> None:
        kinds = list(SweepKind.values) if options["kind"] == "all" else [options["kind"]]
        failed = []
        for kind in kinds:
            now = timezone.now()
            if options["dry_run"]:
                for label, count in reports.would_delete(kind, now, limit=options["limit"]).items():
                    self.stdout.write(f"{kind}: would delete {count} — {label}")
                continue
            with progress_bar(self.stdout, kind) as bar:
                run = sweeps.sweep(kind, now, fanout=sweeps.InProcess(now, progress=bar.update), limit=options["limit"])
            if run is None:
                self.stdout.write(f"{kind}: skipped, another sweep holds the listing")
                continue
            self.stdout.write(describe(run))
            if run.failed:
                failed.append(kind)
        if failed:
            raise CommandError(f"Some items failed and were left for a later run: {', '.join(failed)} (see the log).")
