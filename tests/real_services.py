"""Real services for the tests: PostgreSQL, PgBouncer, Redis and an S3 endpoint (moto) on loopback.

``python -m tests.real_services -- pytest …`` starts them on free ports under a temporary
directory, exports their URLs, runs the command, and stops every server by PID, even when
the command fails or the run is interrupted. ``--pass NAME -- command`` may be given more than
once to run several commands against the same services (``make test`` runs the suite directly
against PostgreSQL, then the locking tests through PgBouncer); the exit code is the first
failure's. The chaos tests reuse the classes to stop and restart Redis.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "test-tasks-bucket"


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the process that started us dies (no leaked servers)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A server process we started and stop by PID."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_kwargs(self) -> dict[str, Any]:
        return {}

    def ready(self) -> bool:
        return _port_open(self.port)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv of our own
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet at this point
            **self.popen_kwargs(),
        )
        log.close()
        try:
            _wait_for(lambda: self.proc.poll() is None and self.ready(), self.name)
        except RuntimeError:
            self.stop()
            sys.stderr.write(self.log_path.read_text(errors="replace")[-3000:])
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found: run scripts/system-deps.sh (make test does)")


class Postgres(Server):
    name = "postgres"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data = workdir / "pgdata"
        self.socket_dir = workdir / "pgsock"
        self.as_root = os.geteuid() == 0

    def _as_user(self) -> dict[str, Any]:
        # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
        return {"user": "postgres", "group": "postgres"} if self.as_root else {}

    def popen_kwargs(self) -> dict[str, Any]:
        return self._as_user()

    def init(self) -> None:
        self.data.mkdir()
        self.socket_dir.mkdir()
        if self.as_root:
            for path in (self.workdir, self.data, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        subprocess.run(  # noqa: S603
            [_find_binary("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            **self._as_user(),
        )

    def command(self) -> list[str]:
        return [
            _find_binary("postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
            "-k", str(self.socket_dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=300",
        ]  # fmt: skip

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def url(self, database: str = "tasks") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> None:
        # SIGINT is PostgreSQL's fast shutdown: it ends client backends instead of waiting for them.
        super().stop(sig, timeout)

    def start(self) -> None:
        fresh = not self.data.exists()
        if fresh:
            self.init()
        super().start()
        if fresh:
            import psycopg

            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE tasks")


class PgBouncer(Server):
    """PgBouncer in transaction pooling mode in front of ``postgres``: how a Celery fleet usually
    reaches PostgreSQL. Consecutive transactions of one client may run on different server
    connections, so any session state (a session lock, a server-side cursor) breaks behind it."""

    name = "pgbouncer"

    def __init__(self, workdir: Path, postgres: Postgres) -> None:
        super().__init__(workdir)
        self.postgres = postgres
        self.as_root = os.geteuid() == 0

    def popen_kwargs(self) -> dict[str, Any]:
        # Like PostgreSQL, PgBouncer refuses to run as root.
        return {"user": "postgres", "group": "postgres"} if self.as_root else {}

    def configure(self) -> Path:
        (self.workdir / "userlist.txt").write_text('"postgres" ""\n')
        config = self.workdir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host=127.0.0.1 port={self.postgres.port}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.workdir / 'userlist.txt'}",
                    "admin_users = postgres",
                    "pool_mode = transaction",
                    "server_reset_query =",
                    "max_client_conn = 1000",
                    "default_pool_size = 40",
                    "ignore_startup_parameters = extra_float_digits,options",
                    "",
                ]
            )
        )
        if self.as_root:
            for path in (self.workdir, config, self.workdir / "userlist.txt"):
                shutil.chown(path, "postgres", "postgres")
        return config

    def command(self) -> list[str]:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        return [binary, str(self.configure())]

    def url(self, database: str = "tasks") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


class Redis(Server):
    name = "redis"

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no",
        ]  # fmt: skip

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class S3(Server):
    name = "moto"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url()}/moto-api/", timeout=2):  # noqa: S310 - loopback
            return True

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def create_bucket(self, name: str) -> None:
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.url(), aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        )  # fmt: skip
        client.create_bucket(Bucket=name)


@contextlib.contextmanager
def running_services(workdir: Path) -> Iterator[dict[str, str]]:
    """Start PostgreSQL, Redis and S3; yield the environment that points the project at them."""
    servers: list[Server] = []
    try:
        postgres = Postgres(workdir / "pg")
        pgbouncer = PgBouncer(workdir / "pgbouncer", postgres)
        redis = Redis(workdir / "redis")
        s3 = S3(workdir / "s3")
        for server in (postgres, pgbouncer, redis, s3):
            server.workdir.mkdir(parents=True, exist_ok=True)
            server.log_path = server.workdir / f"{server.name}.log"
            server.start()
            servers.append(server)
        s3.create_bucket(BUCKET)
        yield {
            "DATABASE_URL": postgres.url(),
            "PGBOUNCER_DATABASE_URL": pgbouncer.url(),
            "CELERY_BROKER_URL": redis.url(),
            "AWS_STORAGE_BUCKET_NAME": BUCKET,
            "AWS_S3_ENDPOINT_URL": s3.url(),
            "AWS_S3_REGION_NAME": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
            "VAR_DIR": str(workdir / "var"),
            "TEST_SERVICES_DIR": str(workdir),
        }
    finally:
        for server in reversed(servers):
            server.stop()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_passes(argv: list[str]) -> list[tuple[str, list[str]]]:
    """``-- cmd …`` or ``--pass NAME -- cmd … [--pass NAME -- cmd …]`` → [(name, argv), …]."""
    passes: list[tuple[str, list[str]]] = []
    name = "tests"
    rest = list(argv)
    while rest:
        if rest[0] == "--pass" and len(rest) > 1:
            name, rest = rest[1], rest[2:]
            continue
        if rest[0] == "--":
            rest = rest[1:]
        end = rest.index("--pass") if "--pass" in rest else len(rest)
        passes.append((name, rest[:end]))
        rest = rest[end:]
    return passes or [("tests", [sys.executable, "-m", "pytest"])]


def pass_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of one pass: the ``pgbouncer`` pass reaches PostgreSQL through PgBouncer."""
    if name != "pgbouncer":
        return env
    return {**env, "DATABASE_URL": env["PGBOUNCER_DATABASE_URL"], "DATABASE_DISABLE_SERVER_SIDE_CURSORS": "true"}


def main(argv: list[str]) -> int:
    """Run each pass's command with the services up; return the first non-zero exit code."""
    passes = parse_passes(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="tasks-test-services-"))
    workdir.chmod(0o755)
    child: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        with running_services(workdir) as env:
            print(
                f"services up: {env['DATABASE_URL']} (PgBouncer {env['PGBOUNCER_DATABASE_URL']}) "
                f"{env['CELERY_BROKER_URL']} {env['AWS_S3_ENDPOINT_URL']}",
                flush=True,
            )
            for name, command in passes:
                if len(passes) > 1:
                    print(f"== pass: {name} ==", flush=True)
                started = time.monotonic()
                child = subprocess.Popen(command, env={**os.environ, **pass_env(name, env)}, cwd=ROOT)  # noqa: S603
                code = child.wait()
                if len(passes) > 1:
                    print(f"== pass {name}: exit {code} in {time.monotonic() - started:.0f} s ==", flush=True)
                status = status or code
            return status
    except KeyboardInterrupt:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=30)
            if child.poll() is None:
                child.kill()
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


class RedisWithPassword(Redis):
    """A redis-server that requires a password (``requirepass``): CELERY_BROKER_URL with auth."""

    name = "redis-auth"

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        super().__init__(workdir)
        self.password = password or secrets.token_urlsafe(16)

    def command(self) -> list[str]:
        return [*super().command(), "--requirepass", self.password]

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"


class RedisSentinel(Server):
    """A Redis Sentinel watching ``master`` under ``master_name`` (redis-server in sentinel mode)."""

    name = "redis-sentinel"

    def __init__(self, workdir: Path, master: Redis, master_name: str = "tasksmaster") -> None:
        super().__init__(workdir)
        self.master = master
        self.master_name = master_name

    def command(self) -> list[str]:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1",
        ]
        password = getattr(self.master, "password", None)
        if password:
            lines.append(f"sentinel auth-pass {self.master_name} {password}")
        config = self.workdir / f"sentinel-{self.port}.conf"  # sentinel rewrites its config file
        config.write_text("\n".join(lines) + "\n")
        return [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"]

    def url(self, db: int = 0) -> str:
        """A kombu sentinel URL; the password (if any) is the master's."""
        password = getattr(self.master, "password", None)
        auth = f":{password}@" if password else ""
        return f"sentinel://{auth}127.0.0.1:{self.port}/{db}"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def keep_server(watched: int, argv: list[str], as_postgres: bool) -> int:
    """Run ``argv`` until it exits or ``watched`` (the harness) is gone; then stop it by PID."""
    user = {"user": "postgres", "group": "postgres"} if as_postgres else {}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **user)  # noqa: S603, PLW1509
    while proc.poll() is None:
        if not _alive(watched):
            proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            break
        time.sleep(0.2)
    return proc.wait()


class HarnessPostgres:
    """The harness's PostgreSQL, stopped and started again on the same port and data directory.

    A test runs in a child of the harness, which stops its own server by PID at the end. A
    server the test starts again must outlive the test (the next pass of ``make test`` needs
    it) and still end with the harness: it runs under a keeper process (``keep_server``) that
    stops it by PID once the harness, the first server's parent, is gone.
    """

    def __init__(self, data: Path) -> None:
        self.data = data
        self.argv: list[str] = []
        self.port = 0
        self.harness = 0

    @classmethod
    def from_env(cls) -> HarnessPostgres:
        """The server ``running_services`` started (TEST_SERVICES_DIR is set by the harness)."""
        return cls(Path(os.environ["TEST_SERVICES_DIR"]) / "pg" / "pgdata")

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _harness_pid(self, postmaster: int) -> int:
        # Recorded the first time: the parent of the server the harness itself started.
        record = self.data.parent / "harness.pid"
        if not record.exists():
            stat = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
            record.write_text(stat[1])
        return int(record.read_text())

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT) of the running server; remember its command line."""
        pid = self.pid()
        if pid is None or not _alive(pid):
            raise RuntimeError(f"no PostgreSQL running on {self.data}")
        self.harness = self._harness_pid(pid)
        self.argv = [arg.decode() for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
        self.port = int(self.argv[self.argv.index("-p") + 1])
        os.kill(pid, signal.SIGINT)
        _wait_for(lambda: not _alive(pid), "PostgreSQL shutdown", timeout)

    def start(self, timeout: float = 60.0) -> None:
        """Start the server stopped by ``stop`` again, under a keeper; return once it accepts connections."""
        import json

        import psycopg

        as_postgres = os.geteuid() == 0
        code = (
            "import json, sys\n"
            "from tests.real_services import keep_server\n"
            "sys.exit(keep_server(*json.loads(sys.argv[1])))"
        )
        log = (self.data.parent / "postgres.log").open("ab")
        subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-c", code, json.dumps([self.harness, self.argv, as_postgres])],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the test; the keeper ends with the harness
        )
        log.close()
        url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        _wait_for(lambda: psycopg.connect(url, connect_timeout=2).close() is None, "PostgreSQL restart", timeout)

    def restart(self, down: float = 0.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()
