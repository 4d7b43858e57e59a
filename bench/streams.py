"""Scenario 6, the public streams (`--only streams`): 5,000 open Server-Sent Events streams on ONE
web process (WEB_CONCURRENCY=1, gevent) while the flash sale of scenario 1 runs against it.

Each round runs the flash sale twice on the same process, moments apart, on a fresh public deal
of 1,000 units each time: once with no stream open, once with 5,000 streams open on the deal
being sold (the order alternates between rounds). The streams are one client process
(bench/sse_clients.py: gevent, one greenlet and one socket per stream) recording when each
event arrives.

Measured:

* req/s of the flash sale with the streams open against without (the goal: at most 10% lower);
* for each of the 1,000 reserves, the time from the reserve to its change arriving on the
  SLOWEST of the 5,000 streams: p50, p99, max. A reserve's time is its hold's `created_at`
  (taken before the reserve's Redis script runs, so this errs long); its change has arrived on
  a stream at the first event showing that many units or fewer left (events are coalesced: one
  event may carry many reserves, each counted with its own start);
* that every stream saw the sell-out (`sold_out: true`) within 1 s of the last reserve;
* how long the server took to notice the 5,000 clients gone once they closed (its streams'
  gauge back to 0: a heartbeat checks, within 15 s).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from bench import scenarios
from bench.procs import ROOT
from bench.scenarios import FLASH_UNITS, Row
from bench.targets import Target, to_epoch

STREAMS = 5000
ONE_PROCESS = {"WEB_CONCURRENCY": "1"}
#: Every stream must show the sell-out within this long of the last reserve.
SOLD_OUT_WITHIN_S = 1.0
WITH_ID, WITHOUT_ID = "flash_streams", "flash_no_streams"


@dataclass
class Seen:
    """What the clients saw, against the reserves' times."""

    opened: int
    failed: int
    ended_early: int
    open_seconds: float
    client_cpu: float
    #: Per reserve, ms from it to its change on the slowest stream (streams that saw it).
    latencies_ms: list[float] = field(default_factory=list)
    #: Streams that never saw some reserve's change (0 when all is well).
    behind: int = 0
    sold_out: bool = False
    sold_out_seen_by: int = 0
    sold_out_first_ms: float | None = None
    sold_out_last_ms: float | None = None
    gone_after_s: float | None = None

    def percentile(self, p: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def sold_out_ok(self) -> bool:
        return (
            self.sold_out
            and self.sold_out_seen_by == self.opened
            and self.sold_out_last_ms is not None
            and self.sold_out_last_ms <= SOLD_OUT_WITHIN_S * 1000
        )


def run(app: Target, options, add) -> None:
    """`options.rounds` rounds of (no streams, 5,000 streams) on one web process; `add(row)`
    records each row."""
    app.start(extra_env=ONE_PROCESS, tag="streams")
    try:
        scenarios.warm_up(app, options.warmup, options.connections)
        for round_ in range(1, options.rounds + 1):
            tag = f" · round {round_}" if options.rounds > 1 else ""
            runs = [without_streams, with_streams]
            for scenario in runs if round_ % 2 else runs[::-1]:
                row = scenario(app, options.seconds, options.connections, getattr(options, "streams", STREAMS))
                row.scenario += tag
                row.round = round_
                add(row)
    finally:
        app.stop()


def public_deal(target: Target, title: str) -> int:
    status, body = target.request(
        "POST", "/v1/deals", {"title": title, "price_per_unit": 1999, "quantity": FLASH_UNITS, "public": True}
    )
    if status != 201:
        raise RuntimeError(f"creating a deal answered {status}: {body}")
    deal_id = body["deal"]["id"]
    status, _ = target.request("GET", f"/v1/deals/{deal_id}")  # loaded, as before a sale
    assert status == 200, status
    return deal_id


def flash(target: Target, deal_id: int, seconds: float, connections: int, label: str):
    result = target.wrk(
        label,
        "reserve.lua",
        seconds=seconds,
        connections=connections,
        env={"BENCH_DEAL_ID": str(deal_id), "BENCH_KEEP_OKS": str(FLASH_UNITS + 10)},
    )
    verdict, text, _ = scenarios._check_flash(target, deal_id, result, connections)
    return result, verdict, text


def without_streams(target: Target, seconds: float, connections: int, streams: int) -> Row:
    deal_id = public_deal(target, "Flash sale, nobody watching")
    result, verdict, text = flash(target, deal_id, seconds, connections, "streams-none")
    return Row(
        id=WITHOUT_ID,
        scenario="6 flash sale, no stream open (1 web process)",
        system="app",
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors((200, 409)),
        correctness=f"{verdict} {text}",
        ok=verdict != "FAIL",
        notes=f"{result.count(200)} x 200, {result.count(409)} x 409; " + scenarios._load_notes(result),
        result=result,
    )


def with_streams(target: Target, seconds: float, connections: int, streams: int) -> Row:
    deal_id = public_deal(target, "Flash sale, watched")
    out = tempfile.NamedTemporaryFile(prefix="bench-streams-", suffix=".json", delete=False).name
    clients = subprocess.Popen(
        [sys.executable, "-m", "bench.sse_clients", "--url", target.url, "--deal", str(deal_id)]
        + ["--streams", str(streams), "--out", out],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _line(clients, 300).split()
        if not ready or ready[0] != "READY":
            raise RuntimeError(f"the stream clients did not start: {ready}")
        opened, failed, open_seconds = int(ready[1]), int(ready[2]), float(ready[3])
        server_open = streams_open(target)
        result, verdict, text = flash(target, deal_id, seconds, connections, "streams-5000")
        clients.stdin.write("STOP\n")
        clients.stdin.flush()
        if _line(clients, 120) != "DONE":
            raise RuntimeError("the stream clients did not finish")
        with open(out) as fh:
            record = json.load(fh)
    finally:
        if clients.poll() is None:
            clients.kill()
        clients.wait(10)
        if os.path.exists(out):
            os.unlink(out)
    closed_at = time.monotonic()
    seen = judge(target, deal_id, record, opened, failed, open_seconds)
    seen.gone_after_s = _wait_gone(target, closed_at)
    row = Row(
        id=WITH_ID,
        scenario=f"6 flash sale, {streams:,} streams open (1 web process)",
        system="app",
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=result.errors((200, 409)),
        correctness=_correctness(verdict, text, seen, streams, server_open),
        ok=verdict != "FAIL" and seen.sold_out_ok and seen.opened == streams and not seen.behind,
        notes=_notes(result, seen),
        result=result,
    )
    row.extra.update(
        latency_p50_ms=seen.percentile(50),
        latency_p99_ms=seen.percentile(99),
        latency_max_ms=max(seen.latencies_ms) if seen.latencies_ms else None,
        sold_out_last_ms=seen.sold_out_last_ms,
        sold_out_ok=seen.sold_out_ok,
        streams=streams,
    )
    return row


def judge(target: Target, deal_id: int, record: dict, opened: int, failed: int, open_seconds: float) -> Seen:
    """Each reserve's change on the slowest stream, and the sell-out on every stream."""
    reserves = [
        to_epoch(created)
        for (created,) in target.sql(
            "SELECT created_at FROM purchases WHERE deal_id = %s AND fulfillment_state = 'reserved' "
            "ORDER BY created_at",
            deal_id,
        )
    ]
    seen = Seen(opened, failed, record["ended"], open_seconds, record["cpu_seconds"])
    slowest = [0.0] * len(reserves)
    sold_out_at: list[float] = []
    for events in record["streams"]:
        if not events:
            continue
        covered = 0  # reserves whose change this stream has shown
        for arrived, available, sold_out in events:
            shown = min(FLASH_UNITS - available, len(reserves))
            while covered < shown:
                if arrived > slowest[covered]:
                    slowest[covered] = arrived
                covered += 1
            if sold_out:
                sold_out_at.append(arrived)
                break
        if covered < len(reserves):
            seen.behind += 1
    seen.latencies_ms = [1000 * (arrived - reserved) for arrived, reserved in zip(slowest, reserves, strict=True)]
    seen.sold_out = len(reserves) == FLASH_UNITS
    if seen.sold_out and sold_out_at:
        last_reserve = reserves[-1]
        seen.sold_out_seen_by = len(sold_out_at)
        seen.sold_out_first_ms = 1000 * (min(sold_out_at) - last_reserve)
        seen.sold_out_last_ms = 1000 * (max(sold_out_at) - last_reserve)
    return seen


def _correctness(verdict: str, text: str, seen: Seen, streams: int, server_open: int | None) -> str:
    parts = [f"{seen.opened:,}/{streams:,} streams open"]
    if server_open is not None:
        parts[0] += f" (server's gauge {server_open:,})"
    if seen.failed:
        parts.append(f"{seen.failed} failed to open")
    if seen.ended_early:
        parts.append(f"{seen.ended_early} ended early")
    if seen.behind:
        parts.append(f"{seen.behind} streams missed a change")
    if seen.sold_out:
        within = "within" if seen.sold_out_ok else "NOT all within"
        parts.append(
            f"sold out seen by {seen.sold_out_seen_by:,} streams, {within} {SOLD_OUT_WITHIN_S:g} s "
            f"(last {seen.sold_out_last_ms or 0:.0f} ms after the last reserve)"
        )
    else:
        parts.append("not sold out within the run")
    stream_verdict = "OK" if seen.sold_out_ok and not seen.behind and seen.opened == streams else "FAIL"
    if verdict == "FAIL":
        stream_verdict = "FAIL"
    elif verdict != "OK" and stream_verdict == "OK":
        stream_verdict = verdict
    return f"{stream_verdict} " + "; ".join(parts) + f"; flash sale: {verdict} {text}"


def _notes(result, seen: Seen) -> str:
    def ms(value):
        return "n/a" if value is None else f"{value:.0f}"

    latency = (
        f"reserve -> slowest stream p50 {ms(seen.percentile(50))} ms, p99 {ms(seen.percentile(99))} ms, "
        f"max {ms(max(seen.latencies_ms) if seen.latencies_ms else None)} ms ({len(seen.latencies_ms)} reserves)"
    )
    sold = (
        f"sold out on the first stream {ms(seen.sold_out_first_ms)} ms, the last {ms(seen.sold_out_last_ms)} ms "
        "after the last reserve"
    )
    gone = f"server saw the clients gone in {seen.gone_after_s:.1f} s" if seen.gone_after_s is not None else ""
    clients = f"streams opened in {seen.open_seconds:.1f} s; clients {seen.client_cpu:.1f} s CPU in all"
    return "; ".join(
        p
        for p in (
            f"{result.count(200)} x 200, {result.count(409)} x 409",
            latency,
            sold,
            clients,
            gone,
            scenarios._load_notes(result),
        )
        if p
    )


def _line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no answer from the stream clients within {timeout:g} s")
    return process.stdout.readline().strip()


def streams_open(target: Target) -> int | None:
    """The server's own count of open streams (/metrics)."""
    try:
        with urllib.request.urlopen(f"{target.url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("offer_engine_streams_open "):
            return int(float(line.split()[1]))
    return None


def _wait_gone(target: Target, since: float, timeout: float = 45) -> float | None:
    """Seconds until the server counts no open stream (it notices a closed client at the
    stream's next heartbeat); None if it did not within `timeout`."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        if streams_open(target) == 0:
            return time.monotonic() - since
        time.sleep(0.25)
    return None
