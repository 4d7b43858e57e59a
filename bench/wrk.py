"""Driving load with wrk (a separate process, C and LuaJIT) and reading back what it saw.

Each run gets `lua/common.lua` + one scenario script; the script's done() prints one JSON line
with per-status counts and latency percentiles. wrk's own CPU time is taken from the kernel
(wait4) so every result says how busy the load generator was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import cpu_by_pid, cpu_used

LUA = Path(__file__).parent / "lua"


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: `apt-get install -y wrk` (make bench does it)")
    return found


@dataclass
class WrkResult:
    label: str
    seconds: float
    requests: int
    statuses: dict[int, int]
    kinds: dict[str, int]
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    ok_ms: list[float]
    started_at: float  # wall clock (time.time()) just before wrk was started
    wrk_cpu: float  # seconds of CPU wrk used
    server_cpu: float  # seconds of CPU the measured server processes used
    db_cpu: float = 0.0  # seconds of CPU PostgreSQL backends of our database used
    redis_cpu: float = 0.0
    #: Latency by request type ("reserve", "claim"), for scripts that time their requests apart
    #: (lua/common.lua bench_headers): {"n", "p50", "p90", "p99", "max"}, in ms.
    typed_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def count(self, *statuses: int) -> int:
        return sum(self.statuses.get(s, 0) for s in statuses)

    def errors(self, expected: tuple[int, ...] = (200,)) -> int:
        """Answers other than the expected statuses, plus socket errors and timeouts."""
        unexpected = sum(n for status, n in self.statuses.items() if status not in expected)
        return unexpected + self.socket_errors

    def p99_of(self, kind: str) -> float | None:
        return self.typed_latency_ms.get(kind, {}).get("p99")

    def per_second(self, n: int) -> float:
        return n / self.seconds if self.seconds else 0.0

    @property
    def wrk_cores(self) -> float:
        return self.wrk_cpu / self.seconds if self.seconds else 0.0

    @property
    def server_cores(self) -> float:
        return self.server_cpu / self.seconds if self.seconds else 0.0

    def server_ms_per_request(self) -> float:
        return 1000 * self.server_cpu / self.requests if self.requests else 0.0

    def total_ms_per_request(self) -> float:
        """CPU of everything serving a request: web processes, PostgreSQL backends, Redis."""
        total = self.server_cpu + self.db_cpu + self.redis_cpu
        return 1000 * total / self.requests if self.requests else 0.0


class WrkCrashed(RuntimeError):
    """wrk itself died (Debian's wrk 4.1 segfaults about once in 15-20 runs of the scripts that
    read every answer): the run is lost, not wrong."""


def run_wrk(
    label: str,
    url: str,
    script: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    env: dict[str, str] | None = None,
    server_pids: callable = None,
    db_pids: callable = None,
    redis_pids: callable = None,
    timeout_s: int = 5,
    log_dir: Path | None = None,
) -> WrkResult:
    """Run wrk for `seconds` against `url` with bench/lua/`script`; `*_pids` are callables
    returning the pids whose CPU time to charge to this run."""
    source = (LUA / "common.lua").read_text() + "\n" + (LUA / script).read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, prefix="bench-") as fh:
        fh.write(source)
        lua_path = fh.name
    out_path = Path(tempfile.mkstemp(prefix="bench-wrk-", suffix=".out")[1])
    command = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "-s",
        lua_path,
        url,
    ]
    pid_sets = [server_pids or (lambda: []), db_pids or (lambda: []), redis_pids or (lambda: [])]
    before = [cpu_by_pid(get()) for get in pid_sets]
    full_env = {**os.environ, **(env or {})}
    started_at = time.time()
    with open(out_path, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        # wait4, not wait: it hands back the child's own rusage (wrk's CPU time).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    after = [cpu_by_pid(get()) for get in pid_sets]
    os.unlink(lua_path)
    text = out_path.read_text()
    if log_dir is not None:
        (log_dir / f"wrk-{label}.txt").write_text(" ".join(command) + "\n" + text)
    out_path.unlink()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if process.returncode < 0:
        raise WrkCrashed(f"wrk died of signal {-process.returncode} ({label})")
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{text}")
    data = json.loads(line[len("BENCH_JSON ") :])
    errors = data["errors"]
    lat = data["latency_us"]
    return WrkResult(
        label=label,
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        statuses={int(k): v for k, v in data["statuses"].items()},
        kinds=data["kinds"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        ok_ms=data["ok_ms"],
        started_at=started_at,
        wrk_cpu=usage.ru_utime + usage.ru_stime,
        server_cpu=cpu_used(before[0], after[0]),
        db_cpu=cpu_used(before[1], after[1]),
        redis_cpu=cpu_used(before[2], after[2]),
        typed_latency_ms=data.get("typed_latency_ms", {}),
        raw=data,
    )
