"""`make run`'s fleet (scripts/run.sh: web, worker and beat on SQLite and the file-system broker) under load."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.embedded import embedded_env
from tests.real_services import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.fleet


class Fleet:
    """scripts/run.sh in its own process group, its output in a file."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.env = {**embedded_env(var_dir), "PORT": str(self.port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
        self.log = var_dir / "fleet.log"
        self.proc = subprocess.Popen(  # noqa: S603 - our own script
            ["bash", "scripts/run.sh"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-4000:]
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=5) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"the fleet did not come up:\n{self.output()[-4000:]}")

    def token(self) -> str:
        result = subprocess.run(  # noqa: S603 - our own manage.py
            [sys.executable, "manage.py", "drf_create_token", "admin"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.split()[2]

    def submit(self, token: str, n: int) -> int:
        body = json.dumps({"task_type": "demo.echo", "payload": {"n": n}}).encode()
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.base}/api/v1/tasks/",
            data=body,
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return int(response.status)

    def count(self, status: str) -> int:
        with sqlite3.connect(self.var_dir / "db.sqlite3", timeout=30) as db:
            (n,) = db.execute(
                "SELECT count(*) FROM tasks_app_task WHERE task_type = 'demo.echo' AND status = ? "
                "AND payload LIKE '{\"n\":%'",
                (status,),
            ).fetchone()
        return int(n)

    def children(self, pid: int) -> list[int]:
        found: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    def worker_pid(self) -> int:
        """The Celery worker's main process (honcho → keepalive → celery)."""
        for line in self.output().splitlines():
            if "worker.1 started (pid=" in line:
                keepalive = int(line.split("pid=")[1].rstrip(")"))
                (celery,) = self.children(keepalive)
                return celery
        raise AssertionError("no worker in the fleet's output")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path)
    try:
        running.wait_until_up()
        yield running
    finally:
        running.stop()


def wait_for_all_run(fleet: Fleet, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while fleet.count("succeeded") < n and time.monotonic() < deadline:
        assert fleet.proc.poll() is None, fleet.output()[-4000:]
        time.sleep(1)
    assert fleet.count("succeeded") == n, fleet.output()[-4000:]


def test_the_embedded_fleet_runs_a_burst_of_a_thousand_submissions_from_eight_threads(fleet: Fleet) -> None:
    token = fleet.token()
    worker = fleet.worker_pid()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: fleet.submit(token, i), range(1000)))
    assert statuses == [201] * 1000
    wait_for_all_run(fleet, 1000, timeout=300)
    output = fleet.output()
    assert "Unrecoverable error" not in output, output[-4000:]
    assert "keepalive:" not in output, output[-4000:]  # nothing crashed, nothing was restarted
    assert fleet.worker_pid() == worker
    assert fleet.proc.poll() is None


def test_a_crashed_worker_is_started_again_and_web_stays_up(fleet: Fleet) -> None:
    token = fleet.token()
    os.kill(fleet.worker_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "keepalive: worker exited" not in fleet.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    # web answers throughout, and what is submitted now runs on the restarted worker
    assert [fleet.submit(token, i) for i in range(20)] == [201] * 20
    wait_for_all_run(fleet, 20, timeout=120)
    assert fleet.proc.poll() is None
    assert "keepalive: worker exited with status 137; starting it again" in fleet.output()
