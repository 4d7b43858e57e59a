"""Where a request's CPU time goes: py-spy sampling every gunicorn worker while wrk drives a
scenario, then each sample charged to the library its innermost frames belong to.

Output under bench/results/: `profile-<scenario>.svg` (flame graph), `profile-<scenario>.txt`
(collapsed stacks, the raw samples), and the summary tables in latest.md.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# (category, substrings of a frame). A frame reads "Class.function (path:line)"; py-spy shortens
# some of the app's paths to the bare file name, so the app's categories match on names too.
# Checked from the innermost frame outwards: a sample is charged to the first frame that
# matches, so time in the standard library (a socket read, a hash) goes to whoever called it.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("psycopg (driver)", ("psycopg/", "psycopg_binary/", "psycopg_pool/")),
    ("SQLAlchemy ORM (session, unit of work, instances)", ("sqlalchemy/orm/", "sqlalchemy.orm.")),
    ("SQLAlchemy Core (compile, execute, pool)", ("sqlalchemy/", "<sqlalchemy generated")),
    ("redis-py", ("redis/",)),
    ("marshmallow / webargs / flask-smorest", ("marshmallow/", "webargs/", "flask_smorest/", "apispec/")),
    ("JSON (orjson / json)", ("orjson", "json/", "app/core/jsonutil.py", "OrjsonProvider")),
    ("logging", ("logging/", "app/observability/logs.py")),
    ("werkzeug (HTTP parsing, routing, response)", ("werkzeug/",)),
    ("Flask (dispatch, contexts)", ("flask/",)),
    ("gunicorn (socket accept/read/write)", ("gunicorn/",)),
    (
        "app: auth (secret hash + cache)",
        ("app/accounts/service.py", "app/web/api/auth.py", "AccountService.", "hash_secret"),
    ),
    ("app: idempotency decorator", ("app/web/api/idempotency.py", "app/core/idempotency.py", "idempotent.")),
    ("app: purchase service", ("PurchaseService.", "new_token", "new_coupon_code", "effective_state")),
    (
        "app: live stock (script calls)",
        ("LiveStock.", "Scripts.", "code_of", "_redis_errors", "(stock.py", "(scripts.py"),
    ),
    ("app: store (sessions, fence)", ("Database.", "(db.py", "UTCDateTime", "(models.py", "app/store/")),
    ("app: views, schemas, errors", ("app/web/api/", "app/web/errors.py", "(timeutil.py", "app/core/timeutil.py")),
    ("app: other", ("app/",)),
    ("random tokens (secrets / os.urandom)", ("secrets.py", "random.py")),
]

# Frames of a request's work: its handling thread, or the batch commit its writes wait for.
REQUEST_WORK = ("handle_request", "handle (gunicorn", "GroupCommitter.run_batch")

# Inclusive: the share of samples with one of these anywhere on the stack.
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("group commit (committer thread: the batch's SQL, kept answers, events)", ("GroupCommitter.run_batch",)),
    ("the view (Reserve.post / Claim.put: everything below the HTTP layers)", ("Reserve.post", "Claim.put")),
    ("authenticate (require_account)", ("require_account",)),
    ("parse + validate the body (webargs / marshmallow load)", ("Parser.parse (webargs", "Schema.load (marshmallow")),
    ("reserve script (LiveStock.reserve: EVALSHA)", ("LiveStock.reserve",)),
    ("claim (PurchaseService.claim: row lock, fence, script, coupons)", ("PurchaseService.claim",)),
    ("  claim: SELECT ... FOR UPDATE of the purchase (_locked)", ("PurchaseService._locked",)),
    ("  selectin eager loads of coupons and items", ("SelectInLoader",)),
    ("  claim: fulfil (deal lookup, item, coupons)", ("PurchaseService._fulfil",)),
    ("commit_takes (fence, gen check, insert, commit)", ("PurchaseService.commit_takes",)),
    ("SQL connection checkout from the pool (+ pre-ping)", ("_connection_for_bind",)),
    ("  of which pre-ping (SELECT 1 per checkout)", ("do_ping", "_do_ping_w_event")),
    ("fence (pg_advisory_xact_lock_shared)", ("Database.fence",)),
    ("generation check (HGET gen)", ("LiveStock.generation",)),
    ("ORM flush (INSERT / UPDATE)", ("Session.flush", "Session._flush")),
    ("COMMIT", ("SessionTransaction.commit", "Session.commit")),
    ("sweep index write (LiveStock.index)", ("LiveStock.index",)),
    ("dump the response (marshmallow)", ("Schema.dump (marshmallow",)),
    ("error response (ApiError, 409 body)", ("app/web/errors.py",)),
    ("new Purchase object (ORM instrumentation)", ("_initialize_instance", "_new_state_if_none")),
]


@dataclass
class Profile:
    name: str
    samples: int = 0
    by_category: Counter = field(default_factory=Counter)
    by_step: Counter = field(default_factory=Counter)
    wall: Profile | None = None
    cpu_ms_per_request: float = 0.0
    files: list[str] = field(default_factory=list)
    note: str = ""

    def share(self, count: int) -> float:
        return 100 * count / self.samples if self.samples else 0.0


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(pid: int, seconds: float, out: Path, fmt: str, mode: str, rate: int = 250) -> subprocess.Popen:
    """Start py-spy on `pid` and all its subprocesses (the gunicorn workers). `mode` "gil"
    keeps only samples of threads holding the GIL (running Python: the CPU view); "idle" keeps
    every sample of a thread, waiting included (the wall-time view)."""
    command = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        str(rate),
        "--duration",
        str(max(1, round(seconds))),
        "--format",
        fmt,
        "--output",
        str(out),
        "--nonblocking",
        f"--{mode}",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def analyse(name: str, collapsed: Path) -> Profile:
    profile = Profile(name)
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # Only work for requests: request-handling threads, and the committer thread while it
        # commits a batch (the requests' SQL runs there); gunicorn's master and idle loops, and
        # the committer waiting for work, are not a request's cost.
        if not any(any(k in f for k in REQUEST_WORK) for f in frames):
            continue
        profile.samples += n
        category = "other (interpreter, stdlib)"
        for frame in reversed(frames):
            found = next((cat for cat, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if found:
                category = found
                break
        profile.by_category[category] += n
        for step, keys in STEPS:
            if any(k in f for f in frames for k in keys):
                profile.by_step[step] += n
    return profile


def profile_during(pid: int, seconds: float, results: Path, name: str, drive) -> Profile:
    """Run `drive()` (a wrk run of about `seconds`) three times under py-spy: CPU samples as
    collapsed stacks (the numbers), CPU samples as a flame graph, and wall-time samples (waits
    on PostgreSQL, Redis and locks included) as collapsed stacks."""
    if py_spy() is None:
        return Profile(name, note="py-spy not installed (pip install -e '.[bench]')")
    cpu = results / f"profile-{name}-cpu.txt"
    svg = results / f"profile-{name}-cpu.svg"
    wall = results / f"profile-{name}-wall.txt"
    outcome = {}
    for path, fmt, mode in ((cpu, "raw", "gil"), (svg, "flamegraph", "gil"), (wall, "raw", "idle")):
        spy = record(pid, seconds, path, fmt, mode)
        outcome[path.name] = drive()
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0 or not path.exists():
            return Profile(name, note=f"py-spy failed: {err.strip()[-500:]}")
    profile = analyse(name, cpu)
    profile.wall = analyse(name, wall)
    result = outcome.get(cpu.name)
    if result is not None and result.requests:
        profile.cpu_ms_per_request = result.server_ms_per_request()
    profile.files = [cpu.name, svg.name, wall.name]
    return profile
