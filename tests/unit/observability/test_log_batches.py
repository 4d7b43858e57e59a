"""The web workers' log handler: lines go out in batches of whole lines, warnings at once, the
rest within the flush interval, and never a line cut by another process's write."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select

import pytest

from app.observability import logs
from app.observability.logs import JsonFormatter, LineBatchHandler
from tests.support.servers import wait_for


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETFL, os.O_NONBLOCK)
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def logger_with(handler: logging.Handler) -> logging.Logger:
    handler.setFormatter(JsonFormatter("web"))
    logger = logging.getLogger(f"test.batches.{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


def test_info_lines_wait_for_the_batch_and_a_warning_sends_them_in_order(pipe):
    read_end, write_end = pipe
    log = logger_with(LineBatchHandler(write_end, interval=3600))
    log.info("first", extra={"n": 1})
    log.info("second", extra={"n": 2})
    assert drain(read_end) == ""  # batched: no write per line
    log.warning("third")
    lines = [json.loads(line) for line in drain(read_end).splitlines()]
    assert [(line["msg"], line["level"]) for line in lines] == [
        ("first", "info"),
        ("second", "info"),
        ("third", "warning"),
    ]
    assert lines[0]["n"] == 1 and lines[0]["role"] == "web"


def test_a_quiet_process_still_writes_its_lines_within_the_interval(pipe):
    read_end, write_end = pipe
    handler = LineBatchHandler(write_end, interval=0.05)
    log = logger_with(handler)
    log.info("lonely line")
    seen = []
    wait_for(lambda: seen.extend(drain(read_end).splitlines()) or seen, 5, "the batched line")
    assert json.loads(seen[0])["msg"] == "lonely line"
    handler.close()


def test_writes_hold_whole_lines_and_stay_within_pipe_buf(pipe, monkeypatch):
    read_end, write_end = pipe
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(logs.os, "write", recording_write)
    handler = LineBatchHandler(write_end, interval=3600)
    log = logger_with(handler)
    received = []
    for i in range(300):
        log.info("request", extra={"i": i, "path": "/v1/purchases/reserve"})
        received.append(drain(read_end))  # keep the pipe from filling up
    handler.flush()
    received.append(drain(read_end))
    assert len(writes) > 5  # batched, but not into one huge write
    assert all(len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes)
    lines = "".join(received).splitlines()
    assert [json.loads(line)["i"] for line in lines] == list(range(300))


def test_a_slow_line_does_not_hold_up_the_other_threads(pipe):
    """Lines are formatted outside the handler's lock: while one thread formats its line, another
    thread's line is still taken (threads of a web worker do not queue behind each other)."""
    import threading

    read_end, write_end = pipe
    formatting, release = threading.Event(), threading.Event()

    class SlowForFirst(JsonFormatter):
        def format(self, record):
            if record.getMessage() == "slow":
                formatting.set()
                release.wait(10)
            return super().format(record)

    handler = LineBatchHandler(write_end)
    handler.setFormatter(SlowForFirst("web"))
    slow = threading.Thread(target=handler.handle, args=(_record("slow"),))
    slow.start()
    try:
        assert formatting.wait(5)
        quick = threading.Thread(target=handler.handle, args=(_record("quick", logging.WARNING),))
        quick.start()
        quick.join(5)
        assert not quick.is_alive()
        assert [json.loads(line)["msg"] for line in drain(read_end).splitlines()] == ["quick"]
    finally:
        release.set()
        slow.join(5)
    handler.close()
    assert [json.loads(line)["msg"] for line in drain(read_end).splitlines()] == ["slow"]


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("app.test", level, __file__, 0, message, (), None)
