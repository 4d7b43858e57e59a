"""Real servers for tests: private redis-server processes, PostgreSQL databases, and the
Procfile's processes. Everything started here is stopped by pid."""

from __future__ import annotations

import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from app.devtools.embedded import ROOT, EmbeddedRedis, start_procfile_process

__all__ = ["ROOT", "free_port", "RedisServer", "PostgresDatabase", "Process", "wait_for", "run_cli"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where connect() takes source ports)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


#: Ports for the servers tests start (redis-server, gunicorn, proxies): 10000 and up, never in
#: the ephemeral range. A port from there (what binding port 0 gives) can be taken by any
#: client socket between the check and the server's bind, or while a test has the server down
#: to restart it on the same port, and a client connecting to a port nobody listens on may
#: even be connected to itself. The cluster bus ports (port + BUS_OFFSET) lie above them,
#: below the ephemeral range too, so a bus port is never some other server's port. None of the
#: fixed ports the suite uses (PostgreSQL 5432, Redis 6379) are in either range.
SERVER_PORTS_FROM = 10000
BUS_OFFSET = 10000
SERVER_PORTS_TO = min(SERVER_PORTS_FROM + BUS_OFFSET, _ephemeral_low() - BUS_OFFSET)  # exclusive


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: Every port free_port gave this process. A port is only bound some time after it is picked
#: (a Stack picks gunicorn's port, then starts its redis-server, then gunicorn), so "free now"
#: alone would hand the same port to two servers of one test.
_given: set[int] = set()


def free_port(offsets: Sequence[int] = (0,)) -> int:
    """A port below the kernel's ephemeral range that is free now, with port + each of
    `offsets` free too (a cluster node's bus port), and never given before in this process.
    Free now, not reserved: a server that then finds it taken (another test process picked it
    meanwhile) picks again."""
    for _ in range(500):
        port = random.randrange(SERVER_PORTS_FROM, SERVER_PORTS_TO)
        wanted = [port + offset for offset in offsets]
        if not _given.intersection(wanted) and all(port_is_free(p) for p in wanted):
            _given.update(wanted)
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS_FROM}-{SERVER_PORTS_TO - 1} (with offsets {offsets})")


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
    """A private redis-server that tests may kill and restart (on the same port). Its port is
    below the ephemeral range (free_port); when its first start finds the port taken, it
    starts on another one (a restart keeps its port: clients and a cluster know it)."""

    #: Ports that must be free next to the server's own (a cluster node's bus port).
    port_offsets: Sequence[int] = (0,)

    def __init__(self, port: int | None = None, data_dir: str | None = None, **kwargs) -> None:
        super().__init__(port or free_port(self.port_offsets), data_dir, **kwargs)
        self.port_chosen = port is not None
        self.started_once = False

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "redis-server.log"

    def start(self, timeout: float = 10) -> RedisServer:
        import redis

        for attempt in range(10):
            movable = not (self.started_once or self.port_chosen) and attempt < 9
            if movable and not self._ports_free():
                self.move_to(free_port(self.port_offsets))
                continue
            args = self.extra_args
            self.extra_args = [*args, "--logfile", str(self.log_path)]
            try:
                super().start(timeout)
                if self._answering_pid() == self.process.pid:
                    self.started_once = True
                    return self
                error: Exception = RuntimeError(f"another server answers on port {self.port}")
                foreign = True
            except (RuntimeError, redis.RedisError) as failed:
                error, foreign = failed, False
            finally:
                self.extra_args = args
            log = self.log_tail()
            self.stop()
            taken = foreign or "Address already in use" in log or not self._ports_free()
            if not (movable and taken):
                raise RuntimeError(f"redis-server did not start on port {self.port}: {error}; its log:\n{log}")
            self.move_to(free_port(self.port_offsets))
        raise AssertionError("unreachable")

    def _ports_free(self) -> bool:
        return all(port_is_free(self.port + offset) for offset in self.port_offsets)

    def _answering_pid(self) -> int | None:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            return int(client.info("server")["process_id"])
        except (redis.RedisError, KeyError, ValueError):
            return None
        finally:
            client.close()

    def move_to(self, port: int) -> None:
        """Use `port` from now on (before the first start only)."""
        self.port = port

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

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
