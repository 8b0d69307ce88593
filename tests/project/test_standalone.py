"""tasks_app and retention install into another Django project: no project settings, no project Celery app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_two_apps_submit_run_and_purge_in_another_project(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "TASK", "RETENTION_"))}
    env["STANDALONE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tests.project.standalone_run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["outcome"] == "succeeded"
    assert outcome["files_before"] == 2
    assert outcome["erased"] is True
    assert outcome["status"] == "expired"
    assert outcome["usage"] == {"items": 3}
    assert outcome["files_after"] == 0
    assert outcome["audit"] == ["user_erasure"]
