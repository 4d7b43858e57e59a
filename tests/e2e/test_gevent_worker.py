"""gunicorn's gevent worker (the default over PostgreSQL), on the Procfile's web line.

Under gevent a connection's greenlet reads its next request without yielding when the bytes are
already there; config/gunicorn.py makes every answered request wait until the other ready
connections have had their turn (post_request). Without that, a client that keeps its
connection busy held every other connection of the worker up until it paused.

gevent over SQLite is refused at start: SQLite's lock waits would stop the whole process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.devtools.embedded import start_procfile_process
from tests.support.servers import free_port, require_postgres
from tests.support.stack import Stack

#: A request with no Redis or SQL call in it (an unknown path: 404), so serving it never waits.
REQUEST = b"GET /no-such-page HTTP/1.1\r\nHost: test\r\n\r\n"
STATUS_LINE = b"HTTP/1.1 "
PIPELINED = 3000


@pytest.fixture(scope="module")
def gevent_stack():
    require_postgres()
    stack = Stack(web_concurrency=1, extra_env={"GUNICORN_WORKER_CLASS": "gevent"}).start(workers=0)
    yield stack
    stack.stop()


class AnswerCounter(threading.Thread):
    """Reads a connection to the end, counting the answers (status lines) as they arrive."""

    def __init__(self, connection: socket.socket, expected: int) -> None:
        super().__init__(daemon=True)
        self.connection = connection
        self.expected = expected
        self.answers = 0
        self.first = threading.Event()

    def run(self) -> None:
        tail = b""  # a status line may be split across two reads
        while self.answers < self.expected:
            chunk = self.connection.recv(65536)
            if not chunk:
                return
            seen = tail + chunk
            self.answers += seen.count(STATUS_LINE)
            tail = seen[-(len(STATUS_LINE) - 1) :]
            self.first.set()


def test_a_busy_connection_does_not_hold_up_the_others(gevent_stack):
    assert len(gevent_stack.web_worker_pids()) == 1
    busy = socket.create_connection(("127.0.0.1", gevent_stack.port), timeout=60)
    counter = AnswerCounter(busy, PIPELINED)
    counter.start()
    try:
        busy.sendall(REQUEST * PIPELINED)  # pipelined: the next request is always there to read
        assert counter.first.wait(30), "no answer on the busy connection"
        with socket.create_connection(("127.0.0.1", gevent_stack.port), timeout=30) as other:
            other.sendall(REQUEST)
            assert other.recv(65536).startswith(b"HTTP/1.1 404")
        answered_before_the_other = counter.answers
        counter.join(60)
        assert counter.answers == PIPELINED  # the busy connection was served in full too
        # Without the yield the other connection waited for all 3,000 (its answer came after
        # the last of them); with it, after a few.
        assert answered_before_the_other < PIPELINED // 2, answered_before_the_other
    finally:
        busy.close()


def test_gevent_over_sqlite_is_refused_at_start(tmp_path):
    env = {
        "GUNICORN_WORKER_CLASS": "gevent",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'refused.sqlite3'}",
        "PORT": str(free_port()),
    }
    with open(tmp_path / "web.log", "w+") as log:
        web = start_procfile_process("web", env, log)
        try:
            exit_code = web.wait(60)
        except subprocess.TimeoutExpired:
            web.kill()
            raise
        log.seek(0)
        output = log.read()
    assert exit_code != 0, output
    assert "GUNICORN_WORKER_CLASS=gevent needs PostgreSQL" in output


@pytest.mark.parametrize(
    "database_url, expected",
    [("postgresql+psycopg://postgres@127.0.0.1:5432/x", "gevent"), ("sqlite:///{tmp}/x.sqlite3", "gthread")],
)
def test_the_default_worker_is_gevent_over_postgresql_and_gthread_over_sqlite(tmp_path, database_url, expected):
    """What config/gunicorn.py (the Procfile's web line) picks when GUNICORN_WORKER_CLASS is unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("GUNICORN_WORKER_CLASS", "DATABASE_URL")}
    env |= {"DATABASE_URL": database_url.format(tmp=tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    chosen = subprocess.run(
        [sys.executable, "-c", "import config.gunicorn as settings; print(settings.worker_class)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    ).stdout.strip()
    assert chosen == expected
