"""Start the real fleet for tests: worker and beat processes from the Procfile's own commands."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def procfile() -> dict[str, str]:
    """Return the Procfile's process types and their command lines."""
    entries: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


class Fleet:
    """Worker and beat processes started like honcho would, each in its own process group."""

    def __init__(self, logdir: Path, env: dict[str, str]) -> None:
        self.logdir = logdir
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._counter = 0

    def start(self, kind: str, **env: str) -> str:
        """Start one process of ``kind`` (worker, beat, web); return its handle name."""
        self._counter += 1
        name = f"{kind}{self._counter}"
        log = (self.logdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(  # noqa: S602 - the Procfile line, as honcho runs it
            f"exec {procfile()[kind]}",
            shell=True,
            cwd=ROOT,
            env={**self.env, "WORKER_NAME": name, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return name

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (SIGKILL = the machine died)."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
