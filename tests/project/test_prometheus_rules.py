"""The shipped Prometheus alerting rules are valid and fire (only) when they should: promtool checks them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(binary).exists():
        pytest.fail("promtool is missing: scripts/system-deps.sh installs it (make test runs it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False, cwd=RULES)


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_pass() -> None:
    # given alerts_test.yml: each alert firing on its condition, and not on a flat or draining series
    result = promtool("test", "rules", "alerts_test.yml")

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = (RULES / "alerts.yml").read_text()
    tested = (RULES / "alerts_test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]

    assert alerts == [
        "RetentionLagAboveSLO",
        "RetentionSweepsFailing",
        "RetentionBacklogGrowing",
        "TasksBacklogGrowing",
        "RetentionNoRecentSweep",
        "TasksNoWorkerUp",
        "TasksWorkerGone",
    ]
    for alert in alerts:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels" in tested, alert
