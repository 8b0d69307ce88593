"""In-app alerts for those who run no Prometheus: log an error and e-mail the admins (``mail_admins``).

Conditions: retention lag above RETENTION_LAG_ALERT (``lag``), and a sweep whose last
FAILURES_IN_A_ROW finished runs all failed (``sweep_failures:<kind>``). ``check`` runs every
minute from beat (``retention.check_alerts``), in any number of processes at once.

Each condition has one ``AlertState`` row. Admins hear of a condition at most once per
REPEAT_AFTER while it fires, and once more when it clears (only if they heard it fire). Every
change is a conditional UPDATE on that row, so of two processes checking at the same moment
exactly one sends: the database decides, not a process's memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.db.models import Q

from retention import conf
from retention.models import AlertState, SweepKind
from retention.monitoring import metrics

logger = logging.getLogger(__name__)

REPEAT_AFTER = timedelta(hours=1)
FAILURES_IN_A_ROW = 3
LAG = "lag"
FIRING, CLEARED = "firing", "cleared"


@dataclass(frozen=True)
class Condition:
    """One condition as evaluated now."""

    key: str
    firing: bool
    detail: str


@dataclass(frozen=True)
class Notice:
    """An alert sent to the admins."""

    condition: str
    state: str  # FIRING or CLEARED
    detail: str


def evaluate(now: datetime) -> list[Condition]:
    """Every condition, firing or not, with a sentence saying why."""
    limit = conf.lag_alert()
    lag = metrics.retention_lag(now)
    conditions = [
        Condition(
            LAG,
            lag > limit,
            f"retention lag is {lag.total_seconds():.0f} s (alert above {limit.total_seconds():.0f} s)",
        )
    ]
    for kind in SweepKind.values:
        runs = metrics.recent_runs(kind, FAILURES_IN_A_ROW)
        failing = len(runs) == FAILURES_IN_A_ROW and all(metrics.run_failed(run) for run in runs)
        errors = [str(error) for run in runs for error in run.errors][:3]
        detail = f"the last {len(runs)} {kind} sweep runs: " + ", ".join(
            f"#{run.pk} failed {run.failed}" for run in runs
        )
        if errors:
            detail += "; first errors: " + " | ".join(errors)
        conditions.append(Condition(f"sweep_failures:{kind}", failing, detail))
    return conditions


def check(now: datetime) -> list[Notice]:
    """Evaluate every condition and tell the admins what changed; return what was sent.

    The row is marked first (the conditional UPDATE that lets one process of many send), then
    the mail goes out with no transaction open; a mail that fails gives the mark back, so the
    next check (a minute later) tries again instead of staying silent for REPEAT_AFTER.
    """
    notices = []
    for condition in evaluate(now):
        announced = AlertState.objects.filter(condition=condition.key).values_list("announced", flat=True).first()
        state = transition(condition, now)
        if state is None:
            continue
        notice = Notice(condition.key, state, condition.detail)
        if notify(notice):
            notices.append(notice)
        else:
            _unmark(condition.key, state, now, announced=bool(announced))
    return notices


def _unmark(key: str, state: str, now: datetime, *, announced: bool) -> None:
    """Give back the mark ``transition`` made for a notice that was not sent."""
    rows = AlertState.objects.filter(condition=key, updated_at=now)
    if state == FIRING:
        rows.filter(notified_at=now).update(notified_at=None, announced=announced)
    else:
        rows.filter(firing=False).update(firing=True, announced=True)


def _row(key: str) -> None:
    """Make sure the condition's row exists (two processes may create it at once)."""
    if AlertState.objects.filter(condition=key).exists():
        return
    try:
        with transaction.atomic():
            AlertState.objects.create(condition=key)
    except IntegrityError:
        pass  # another process created it


def transition(condition: Condition, now: datetime) -> str | None:
    """Record the condition's state; return FIRING or CLEARED when the admins must be told, else None."""
    _row(condition.key)
    rows = AlertState.objects.filter(condition=condition.key)
    if condition.firing:
        # Tell them unless they heard of it within REPEAT_AFTER (a firing again soon after
        # clearing stays quiet, and so does its clearing).
        told = rows.filter(Q(notified_at__isnull=True) | Q(notified_at__lte=now - REPEAT_AFTER))
        started = {"since": now} if not rows.filter(firing=True).exists() else {}
        if told.update(
            firing=True, announced=True, notified_at=now, detail=condition.detail, updated_at=now, **started
        ):
            return FIRING
        rows.filter(firing=False).update(
            firing=True, announced=False, since=now, detail=condition.detail, updated_at=now
        )
        return None
    if rows.filter(firing=True, announced=True).update(firing=False, announced=False, updated_at=now):
        return CLEARED
    rows.filter(firing=True).update(firing=False, updated_at=now)
    return None


def notify(notice: Notice) -> bool:
    """Log the alert and e-mail the admins; False if the mail failed (logged, never raised)."""
    title = notice.condition.replace("_", " ").replace(":", ": ")
    if notice.state == FIRING:
        logger.error("retention alert firing", extra={"condition": notice.condition, "detail": notice.detail})
        subject = f"Retention alert: {title}"
        body = f"{notice.detail}.\n\nYou will hear again in an hour if it still fires, and when it clears."
    else:
        logger.warning("retention alert cleared", extra={"condition": notice.condition, "detail": notice.detail})
        subject = f"Retention alert cleared: {title}"
        body = f"Cleared: {notice.detail}."
    try:
        mail_admins(subject, body, fail_silently=False)
    except Exception:
        logger.exception("alert e-mail failed; the next check tries again", extra={"condition": notice.condition})
        return False
    return True
