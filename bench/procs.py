"""What the benchmark starts and stops: a fresh PostgreSQL database, private redis-servers, and
gunicorn / RQ worker processes built from the Procfile's lines. Everything is stopped by the
pid (process group) it was started with, and every database created is dropped."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

from app.devtools.embedded import ROOT, EmbeddedRedis, free_port, procfile_command

__all__ = [
    "ROOT",
    "EmbeddedRedis",
    "free_port",
    "Postgres",
    "Service",
    "cpu_by_pid",
    "cpu_seconds",
    "cpu_used",
    "flask_cli",
    "sql_url",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
VENV_BIN = str(Path(sys.executable).parent)


def admin_url() -> str:
    return os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def sql_url(url: str) -> str:
    """A SQLAlchemy URL back to a plain libpq one (psycopg.connect wants no driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://")


class Postgres:
    """One fresh database on the machine's PostgreSQL, dropped by `drop()`."""

    def __init__(self, prefix: str = "oe_bench") -> None:
        self.name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.created = False

    @property
    def url(self) -> str:
        return admin_url().rsplit("/", 1)[0] + "/" + self.name

    def _admin(self, sql: str) -> None:
        with psycopg.connect(admin_url(), autocommit=True, connect_timeout=5) as connection:
            connection.execute(sql)

    def create(self) -> Postgres:
        self._admin(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return self

    def drop(self) -> None:
        if self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.url, **kwargs)

    def backend_pids(self) -> list[int]:
        """Server processes serving this database (their CPU is the SQL side's cost)."""
        with psycopg.connect(admin_url(), autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,)
            ).fetchall()
        return [pid for (pid,) in rows]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
        except FileNotFoundError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(_children(current))
    return pids


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds used so far by each of `pids` that still runs (threads included)."""
    used = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)
    return used


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_by_pid(pids).values())


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two `cpu_by_pid` samples by the processes of the second: one that
    started in between counts whole; one that ended in between (a PostgreSQL backend whose
    connection closed) is left out, an undercount, rather than subtracted."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


class Service:
    """A command run in its own process group with `env`, logging to a file; `stop()` signals
    that group only (the one whose id is the pid we started)."""

    def __init__(self, name: str, command: list[str] | str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    @classmethod
    def procfile(
        cls, line: str, env: dict[str, str], log_dir: Path, *, app: str | None = None, name: str = ""
    ) -> Service:
        """The Procfile's `line`, run with `bash -c`; `app` replaces the WSGI app of the web
        line (same gunicorn settings, another application: the baselines)."""
        command = procfile_command(line)
        if app is not None:
            parts = shlex.split(command)
            assert parts[0] == "gunicorn", command
            parts[-1] = app
            command = shlex.join(parts)
        return cls(name or line, ["bash", "-c", command], env, log_dir)

    def start(self) -> Service:
        full_env = dict(os.environ)
        full_env.update(self.env)
        full_env["PATH"] = VENV_BIN + os.pathsep + full_env.get("PATH", "")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        return tree(self.pid) if self.alive() else []

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes (the children of the master)."""
        pids = self.pids()
        if not pids:
            return []
        # bash -c execs gunicorn directly, so the master is our pid; if bash stayed, skip it.
        master = pids[0]
        children = _children(master)
        if len(children) == 1 and _children(children[0]):
            master = children[0]
        return _children(master)

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(5)
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_http(url: str, service: Service, timeout: float = 60) -> None:
    """Until `url` answers 200 (the service is up), or fail with its log."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} not ready after {timeout}s:\n{service.log_tail()}")
        time.sleep(0.1)


def flask_cli(args: list[str], env: dict[str, str], *, check: bool = True) -> subprocess.CompletedProcess:
    """`flask --app app ARGS` with `env` (the same commands an operator runs)."""
    full_env = dict(os.environ)
    full_env.update(env)
    result = subprocess.run(
        [os.path.join(VENV_BIN, "flask"), "--app", "app", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"flask {shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
