"""The embedded mode `make run` uses (SQLite, local files, the file-system broker), for tests that run it in a child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def embedded_env(var_dir: Path) -> dict[str, str]:
    """This environment switched to the embedded mode, its database and files under ``var_dir``."""
    return {
        **os.environ,
        "VAR_DIR": str(var_dir),
        "DATABASE_URL": f"sqlite:///{var_dir / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "AWS_STORAGE_BUCKET_NAME": "",
    }


def run_embedded(module: str, var_dir: Path, *, timeout: float) -> Any:
    """Run ``python -m module`` in the embedded mode; return the JSON of the last line it prints."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=embedded_env(var_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
