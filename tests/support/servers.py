"""Real servers for tests: private redis-server processes, PostgreSQL databases, and the
Procfile's processes. Everything started here is stopped by pid."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from app.devtools.embedded import ROOT, EmbeddedRedis, free_port, start_procfile_process

__all__ = ["ROOT", "free_port", "RedisServer", "PostgresDatabase", "Process", "wait_for", "run_cli"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as error:  # the condition may fail while a server starts
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


class RedisServer(EmbeddedRedis):
    """A private redis-server that tests may kill and restart (on the same port)."""

    def restart(self) -> None:
        self.kill()
        self.start()


def postgres_admin_url() -> str:
    return os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(reason: str) -> None:
    """A server or tool a test needs is missing: the test fails in CI, and is skipped elsewhere."""
    import pytest

    if IN_CI:
        pytest.fail(f"CI needs this: {reason}", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> None:
    """Fail (in CI) or skip the calling test when PostgreSQL does not answer."""
    reason = postgres_reachable()
    if reason:
        unavailable(f"PostgreSQL is not reachable: {reason}")


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    import psycopg

    try:
        with psycopg.connect(postgres_admin_url(), connect_timeout=3):
            return None
    except Exception as error:
        return str(error)


class PostgresDatabase:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""

    def __init__(self, prefix: str = "oe_test") -> None:
        self.name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    @property
    def url(self) -> str:
        admin = postgres_admin_url()
        return admin.rsplit("/", 1)[0] + "/" + self.name

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(postgres_admin_url(), autocommit=True) as connection:
            connection.execute(sql)

    def create(self) -> PostgresDatabase:
        self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Process:
    """One Procfile process, run as `bash -c` with the venv first on PATH, in its own group."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Process:
        self._log = open(self.log_path, "ab")
        self.process = start_procfile_process(self.name, self.env, self._log)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            self._close_log()
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(5)
        self._close_log()

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def run_cli(args: list[str], env: dict[str, str]) -> str:
    """Run `flask --app app ...` with `env`; returns stdout."""
    full_env = dict(os.environ)
    full_env.update(env)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"flask {shlex.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout
