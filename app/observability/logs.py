"""Structured logs: one JSON object per line on stdout, with the request id when there is one.

The request id comes from the caller's `X-Request-ID` when it is sane (see `accept_request_id`),
otherwise it is generated; the web app returns it in the response and puts it in the metadata of
every RQ job the request enqueues, and the worker sets it again while the job runs
(`workers/__main__.py`), so one id follows a purchase from the HTTP request to its webhook.

Secrets never reach a log line: the formatter masks `api_secret=...`, `Bearer ...` and webhook
signing secrets in the message, in string extras and in tracebacks, and drops extras whose name
says they hold a secret.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import select
import sys
import threading
import time

import orjson

from app.observability import telemetry

#: The current request's id (set by the web app per request, and by jobs from their metadata).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

#: What we accept from a caller's X-Request-ID: short, printable, no spaces or quotes (it goes
#: into log lines and response headers verbatim).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

#: Key of the request id in an RQ job's `meta`.
JOB_META_KEY = "request_id"

_SECRET_PATTERNS = (
    (re.compile(r"(api_secret|api_key)(=|%3D|\"?\s*:\s*\"?)[^&\s\"',;]+", re.IGNORECASE), r"\1\2[redacted]"),
    (re.compile(r"(bearer)\s+[^\s\"',;]+", re.IGNORECASE), r"\1 [redacted]"),
    # Webhook secrets are standard base64 (+, / and = too); the older ones, and API secrets,
    # URL-safe base64.
    (re.compile(r"\b(oe|whsec)_[A-Za-z0-9_+/=-]{8,}"), r"\1_[redacted]"),
)
_SECRET_FIELDS = frozenset({"api_secret", "api_key", "authorization", "secret", "password", "signing_secret"})


#: Every pattern above needs one of these (lowercased) in the text: most texts (an access
#: line's method, path and endpoint) contain none and skip the three substitutions.
_SECRET_MARKERS = ("api_", "bearer", "oe_", "whsec_")


def redact(text: str) -> str:
    """`text` with anything that looks like an API secret, bearer token or webhook secret masked."""
    lowered = text.lower()
    if not any(marker in lowered for marker in _SECRET_MARKERS):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def accept_request_id(presented: str | None) -> str:
    """The caller's request id when it is sane, otherwise a new one."""
    if presented and _SANE_REQUEST_ID.fullmatch(presented):
        return presented
    return new_request_id()


def new_request_id() -> str:
    return os.urandom(16).hex()  # 32 hex digits, like a uuid4's, for a fifth of the cost


def job_meta() -> dict:
    """Metadata for an RQ job enqueued now: carries the current request id into the worker, and
    the request's trace context when OpenTelemetry traces are on (app/observability/telemetry.py)."""
    rid = request_id.get()
    meta = {JOB_META_KEY: rid} if rid else {}
    return telemetry.inject(meta) if telemetry.enabled() else meta


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second  # one tuple, read and replaced whole: safe across threads
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "role": self.role,
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                if key.lower() in _SECRET_FIELDS:
                    continue
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class LineBatchHandler(logging.Handler):
    """Writes log lines to a file descriptor in batches of whole lines.

    A StreamHandler writes and flushes every line while holding its lock: under load that is
    a system call per request with the web threads queued behind it (a third of a request's
    wall time in the flash-sale profile). Here a line is appended to a list; the list goes out
    in one write when it nears PIPE_BUF bytes, at once for a warning or worse, and otherwise
    within `interval` seconds from a background thread (and at exit, via logging.shutdown).
    Each write holds whole lines and at most PIPE_BUF bytes where it can, so the lines of
    several processes sharing one pipe never cut into each other.

    The cost: a process killed with SIGKILL loses up to `interval` seconds of info lines.
    """

    def __init__(self, fd: int, interval: float = 0.2) -> None:
        super().__init__()
        self.fd = fd
        self.interval = interval
        self._pending: list[bytes] = []
        self._size = 0
        self._flusher_pid: int | None = None  # threads do not survive fork: one per process
        self._stopped = threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:
        """Formats outside the handler's lock (logging's own `handle` formats inside it): threads
        logging at once queue only for the append, not behind each other's formatting."""
        if not self.filter(record):
            return False
        line = self._line(record)
        if line is not None:
            with self.lock:
                self._append(line, record.levelno)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        line = self._line(record)
        if line is not None:
            self._append(line, record.levelno)

    def _line(self, record: logging.LogRecord) -> bytes | None:
        try:
            return (self.format(record) + "\n").encode()
        except Exception:
            self.handleError(record)
            return None

    def _append(self, line: bytes, level: int) -> None:
        if self._size + len(line) > select.PIPE_BUF:
            self._write()
        self._pending.append(line)
        self._size += len(line)
        if level >= logging.WARNING:
            self._write()
        elif self._flusher_pid != os.getpid():
            self._flusher_pid = os.getpid()
            threading.Thread(target=self._flush_every_interval, name="log-flusher", daemon=True).start()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def close(self) -> None:
        self.flush()
        self._stopped.set()
        super().close()

    def _flush_every_interval(self) -> None:
        while not self._stopped.wait(self.interval):
            self.flush()

    def _write(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # stdout is gone (closed pipe): nothing left to tell


def configure_logging(role: str, level: int = logging.INFO, *, batched: bool = False) -> None:
    """JSON lines on stdout for this process. `batched` (the web workers) writes them in batches
    (LineBatchHandler); processes that may end in os._exit, like RQ's forked work horses, write
    each line as it comes."""
    if batched:
        sys.stdout.flush()  # whatever was printed before goes first
        handler: logging.Handler = LineBatchHandler(sys.stdout.fileno())
    else:
        handler = logging.StreamHandler(sys.stdout)
    # No line shows the caller's file, thread or process: logging's documented optimisations
    # skip looking them up for every record (a tenth of the access line's cost).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("rq.worker", "rq.queue", "rq.scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
