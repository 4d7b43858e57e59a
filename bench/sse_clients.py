"""Many Server-Sent Events clients in one process: `python -m bench.sse_clients` (bench/streams.py
runs it). One gevent greenlet per connection, each a plain socket that sends the request an
EventSource sends and reads the stream's lines: thousands of connections cost a few MB and a
fraction of a core, not a thread each.

    python -m bench.sse_clients --url http://127.0.0.1:8000 --deal 7 --streams 5000 --out result.json

It opens the streams in batches, each waiting for its first `stock` event, and prints
`READY <open> <failed> <seconds>` when all are open; then it records, per stream, the arrival
time (time.time(), the same clock as the server's) and `available` / `sold_out` of every event,
until a line `STOP` arrives on stdin. Then it closes every connection, writes the record to
--out as JSON and prints `DONE`:

    {"streams": [[[t, available, sold_out], ...], ...], "failed": N, "ended": N (before STOP),
     "heartbeats": N, "cpu_seconds": S, "open_seconds": S}
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after the patch, as gevent asks)
import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent import select  # noqa: E402
from gevent.pool import Pool  # noqa: E402

DATA = b"data: "
HEARTBEAT = b": "


class Client:
    """One stream: connected, then reading lines until closed."""

    __slots__ = ("host", "port", "request", "events", "sock", "ended", "heartbeats", "ready")

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.events: list[tuple[float, int, bool]] = []
        self.sock: socket.socket | None = None
        self.ended = False
        self.heartbeats = 0
        self.ready = gevent.event.Event()

    def run(self) -> None:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=30)
            self.sock.settimeout(None)
            self.sock.sendall(self.request)
            self._read()
        except OSError:
            pass
        finally:
            self.ended = True
            self.ready.set()

    def _read(self) -> None:
        buffer = b""
        headers_done = False
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            arrived = time.time()
            buffer += chunk
            if not headers_done:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    continue
                if not buffer.startswith(b"HTTP/1.1 200"):
                    return
                headers_done = True
                buffer = buffer[end + 4 :]
            lines = buffer.split(b"\n")
            buffer = lines.pop()  # an incomplete line waits for the rest
            for line in lines:
                if line.startswith(DATA):
                    deal = json.loads(line[len(DATA) :])["deal"]
                    self.events.append((arrived, deal["available"], deal["sold_out"]))
                    self.ready.set()
                elif line.startswith(HEARTBEAT):
                    self.heartbeats += 1

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--deal", type=int, required=True)
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=250, help="connections opened at once")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.streams + 512)), hard))

    url = urlsplit(args.url)
    path = f"/v1/public/deals/{args.deal}/stream"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()
    clients = [Client(url.hostname, url.port, request) for _ in range(args.streams)]
    pool = Pool(args.streams)
    started = time.monotonic()
    for first in range(0, len(clients), args.batch):
        batch = clients[first : first + args.batch]
        for client in batch:
            pool.spawn(client.run)
        for client in batch:
            client.ready.wait(60)
    opened = time.monotonic() - started
    failed = sum(1 for c in clients if not c.events)
    print(f"READY {len(clients) - failed} {failed} {opened:.2f}", flush=True)

    while True:  # until STOP (stdin read without blocking the other greenlets)
        select.select([sys.stdin], [], [])
        line = sys.stdin.readline()
        if not line or line.strip() == "STOP":
            break
    ended = sum(1 for c in clients if c.ended)  # before we close them: the server ended these
    for client in clients:
        client.close()
    pool.join(timeout=10)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "streams": [c.events for c in clients],
        "failed": failed,
        "ended": ended,
        "heartbeats": sum(c.heartbeats for c in clients),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "open_seconds": opened,
    }
    with open(args.out, "w") as out:
        json.dump(record, out)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
