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
import re
import sys
import time
import uuid

import orjson

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
    (re.compile(r"\b(oe|whsec)_[A-Za-z0-9_-]{8,}"), r"\1_[redacted]"),
)
_SECRET_FIELDS = frozenset({"api_secret", "api_key", "authorization", "secret", "password", "signing_secret"})


def redact(text: str) -> str:
    """`text` with anything that looks like an API secret, bearer token or webhook secret masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def accept_request_id(presented: str | None) -> str:
    """The caller's request id when it is sane, otherwise a new one."""
    if presented and _SANE_REQUEST_ID.fullmatch(presented):
        return presented
    return new_request_id()


def new_request_id() -> str:
    return uuid.uuid4().hex


def job_meta() -> dict:
    """Metadata for an RQ job enqueued now: carries the current request id into the worker."""
    rid = request_id.get()
    return {JOB_META_KEY: rid} if rid else {}


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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


def configure_logging(role: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("rq.worker", "rq.queue", "rq.scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
