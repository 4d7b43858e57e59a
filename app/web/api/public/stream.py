"""GET /v1/public/deals/:id/stream as Server-Sent Events, the format a browser's `EventSource`
reads (https://html.spec.whatwg.org/multipage/server-sent-events.html):

    retry: 2137                      once, first: reconnect after this many ms
    event: stock                     at connect, and after every change (>= 100 ms apart)
    data: {"status": "success", "deal": {...}}     the body of GET /v1/public/deals/:id

    : keep-alive                     a comment when nothing was sent for 15 s

The events come from the process's one feed (`LiveFeed`, app/inventory/storefront.py): a stream
reads nothing itself, and the bytes of an event are made once per change, not once per stream.

Under gunicorn's gevent worker (the default over PostgreSQL) a stream is a greenlet waiting on
the feed: thousands fit in one process (GUNICORN_WORKER_CONNECTIONS). Under a threaded worker
(gthread over SQLite, the Flask test client) each stream holds a thread for as long as it is
open, so a process serves at most STREAM_THREAD_LIMIT of them and answers 503 beyond, keeping
its threads for the API.

A stream ends when its client goes away (its next write fails; a heartbeat first checks whether
the client closed the connection, so a dead one is noticed within one heartbeat), when its deal
stops being public, and when the worker shuts down (config/gunicorn.py calls `end_streams`).
"""

from __future__ import annotations

import random
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app

from app.core.jsonutil import dumps
from app.inventory.storefront import FeedEnded, Listener, PublicDeal
from app.observability.metrics import STREAM_EVENTS, STREAMS_OPEN
from app.web.api.public.schemas import PublicDealEnvelope
from app.web.errors import ApiError

#: Seconds without an event before a heartbeat comment (proxies close idle connections).
HEARTBEAT_SECONDS = 15.0
#: The `retry:` each stream is given, drawn from this range (ms): after a restart the browsers
#: come back spread over two seconds instead of all in the same instant.
RETRY_MS = (1000, 3000)
#: Streams one process serves at once under a threaded worker (a thread each).
STREAM_THREAD_LIMIT = 4

HEARTBEAT = b": keep-alive\n\n"
STREAM_DESCRIPTION = (
    "`text/event-stream`: `retry: <ms>`, then `event: stock` with the JSON of GET "
    "/v1/public/deals/{deal_id} at connect and after every change (at most one per 100 ms), and a "
    "`: keep-alive` comment after 15 s without one. The stream ends when the deal stops being public."
)
ENVELOPE = PublicDealEnvelope()


def cooperative() -> bool:
    """Whether this process runs under gevent (gunicorn's gevent worker patches the socket
    module before it loads the app)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("socket")


def event_bytes(state: PublicDeal) -> bytes:
    return b"event: stock\ndata: " + dumps(ENVELOPE.dump({"deal": state})).encode() + b"\n\n"


class Streams:
    """This process's streams: their settings, how many are open, the events' bytes."""

    EXTENSION = "offer_engine_streams"

    def __init__(self, *, heartbeat: float, thread_limit: int | None) -> None:
        self.heartbeat = heartbeat
        #: None: no limit (gevent).
        self.thread_limit = thread_limit
        self.open = 0
        self._lock = threading.Lock()
        #: deal id -> (the state, its event's bytes): made once per change and shared.
        self._encoded: dict[int, tuple[PublicDeal, bytes]] = {}

    @classmethod
    def of(cls, app: Flask | None = None) -> Streams:
        return (app or current_app).extensions[cls.EXTENSION]

    def admit(self) -> None:
        """Refuse a stream this process cannot hold (threaded workers only)."""
        if self.thread_limit is not None and self.open >= self.thread_limit:
            raise ApiError(
                503,
                "unavailable",
                "This process serves no more streams now; retry shortly.",
                headers={"Retry-After": "5"},
            )

    def response(self, listener: Listener, environ: dict) -> Response:
        response = Response(
            EventStream(self, listener, environ.get("gunicorn.socket")),
            mimetype="text/event-stream",
            # Our bytes go to the server as they are (no re-encoding generator per write).
            direct_passthrough=True,
        )
        response.headers["Cache-Control"] = "no-store"
        # Proxies that buffer answers (nginx) must pass each event on at once.
        response.headers["X-Accel-Buffering"] = "no"
        return response

    def encoded(self, state: PublicDeal) -> bytes:
        cached = self._encoded.get(state.id)
        if cached is not None and cached[0] is state:
            return cached[1]
        data = event_bytes(state)
        self._encoded[state.id] = (state, data)
        if len(self._encoded) > 10_000:  # deals nobody watches any more
            self._encoded.clear()
        return data

    def opened(self) -> None:
        with self._lock:
            self.open += 1
        STREAMS_OPEN.inc()

    def closed(self) -> None:
        with self._lock:
            self.open -= 1
        STREAMS_OPEN.dec()


class EventStream:
    """The answer's body: an iterable the WSGI server reads and closes (closing it, even before
    the first read, takes the listener off the feed)."""

    def __init__(self, streams: Streams, listener: Listener, sock: Any) -> None:
        self.streams = streams
        self.listener = listener
        self.sock = sock
        self.retry_ms = random.randint(*RETRY_MS)
        self._events = self._generate()
        self._open = True
        streams.opened()

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        self._events.close()
        if self._open:
            self._open = False
            self.listener.close()
            self.streams.closed()

    def _generate(self) -> Iterator[bytes]:
        streams, listener = self.streams, self.listener
        try:
            first = listener.next(0)
            head = f"retry: {self.retry_ms}\n\n".encode()
            if first is not None:
                head += streams.encoded(first)
                STREAM_EVENTS.inc()
            yield head
            while True:
                state = listener.next(streams.heartbeat)
                if state is not None:
                    yield streams.encoded(state)
                    STREAM_EVENTS.inc()
                elif client_gone(self.sock):
                    return
                else:
                    yield HEARTBEAT
        except FeedEnded:
            return


def client_gone(sock: Any) -> bool:
    """Whether the client closed the connection: the socket is readable and a read would give
    nothing (end of file). Checked before a heartbeat, so that a client that closed is noticed
    then, not at the write after it (the first write to a closed peer still succeeds)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def end_streams(app: Any) -> None:
    """End every stream of this process (the worker is shutting down): each one's response
    finishes at once, and the browsers reconnect, to another worker or to this one restarted."""
    services = getattr(app, "extensions", {}).get("offer_engine")
    if services is not None:
        services.storefront.feed.close()


def init_app(app: Flask) -> None:
    heartbeat = float(app.config.get("STREAM_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    limit = None if cooperative() else int(app.config.get("STREAM_THREAD_LIMIT", STREAM_THREAD_LIMIT))
    app.extensions[Streams.EXTENSION] = Streams(heartbeat=heartbeat, thread_limit=limit)
