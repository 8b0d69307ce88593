"""The embedded default `make run` uses: SQLite, local files, the file-system broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.embedded import embedded_env

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_mode_migrates_and_seeds_on_sqlite(tmp_path: Path) -> None:
    # every migration must also run on SQLite (the tests otherwise run on PostgreSQL)
    env = embedded_env(tmp_path)
    for args in (["migrate", "--noinput"], ["seed_demo"], ["retention_status"]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    assert (
        "Password:"
        in subprocess.run(
            [sys.executable, "manage.py", "seed_demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        ).stdout
    )
