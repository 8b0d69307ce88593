"""Run a command and start it again when it crashes: `make run` wraps each Procfile line in this.

honcho stops every process as soon as one exits, so without this a worker that crashed would take
web and beat down with it. A command that exits by itself with status 0 is not restarted (this
exits 0 too); one that fails or is killed by a signal is started again after a short pause, unless
it failed ``GIVE_UP_AFTER`` times within ``WINDOW`` seconds (a configuration error, not a crash):
then this exits with its status and honcho stops the fleet, as before. SIGTERM and SIGINT are
passed on to the command, and this exits when it does.

Usage: ``python scripts/keepalive.py NAME -- COMMAND [ARGS…]``
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType

GIVE_UP_AFTER = 5
WINDOW = 60.0
PAUSE = 1.0


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: keepalive.py NAME -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    name, command = argv[0], argv[2:]
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    crashes: list[float] = []
    while True:
        child = subprocess.Popen(command)  # noqa: S603 - the Procfile's own command line
        status = child.wait()
        if status < 0:
            status = 128 - status  # killed by a signal: the shell's convention
        if stopping or status == 0:
            return status
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < WINDOW] + [now]
        if len(crashes) >= GIVE_UP_AFTER:
            print(f"keepalive: {name} failed {len(crashes)} times in {WINDOW:.0f} s; giving up", file=sys.stderr)
            return status
        print(f"keepalive: {name} exited with status {status}; starting it again", file=sys.stderr, flush=True)
        time.sleep(PAUSE)
        if stopping:
            return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
