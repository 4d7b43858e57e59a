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

# (category, substrings of a frame's file path). Checked from the innermost frame outwards:
# a sample is charged to the first frame that matches, so time in the standard library (a
# socket read, a hash) goes to the library that called it.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("psycopg (driver, incl. waiting on PostgreSQL)", ("psycopg/", "psycopg_binary/", "psycopg_pool/")),
    ("SQLAlchemy ORM (session, unit of work, loading)", ("sqlalchemy/orm/",)),
    ("SQLAlchemy Core (compile, execute, pool)", ("sqlalchemy/",)),
    ("redis-py (incl. waiting on Redis)", ("redis/",)),
    ("marshmallow / webargs / flask-smorest", ("marshmallow/", "webargs/", "flask_smorest/", "apispec/")),
    ("JSON (orjson / json)", ("orjson", "json/")),
    ("logging", ("logging/",)),
    ("werkzeug (HTTP parsing, routing, response)", ("werkzeug/",)),
    ("Flask (dispatch, contexts)", ("flask/",)),
    ("gunicorn (socket accept/read/write)", ("gunicorn/",)),
    ("app: auth (secret hash + cache)", ("app/accounts.py", "app/api/auth.py")),
    ("app: idempotency decorator", ("app/api/idempotency.py", "app/idempotency.py")),
    ("app: purchase service", ("app/inventory/purchases.py",)),
    ("app: live stock (script calls)", ("app/inventory/stock.py", "app/inventory/scripts.py")),
    ("app: store (sessions, fence)", ("app/store/",)),
    ("app: schemas and views", ("app/api/",)),
    ("app: other", ("app/",)),
    ("random tokens (secrets / os.urandom)", ("secrets.py", "random.py")),
]

# Inclusive: the share of samples with one of these functions anywhere on the stack.
STEPS: list[tuple[str, tuple[str, ...]]] = [
    ("authenticate (require_account)", ("require_account",)),
    ("parse + validate body (webargs/marshmallow)", ("_get_arguments", "parse (webargs")),
    ("reserve script (LiveStock.reserve, EVALSHA)", ("reserve (app/inventory/stock.py",)),
    ("claim: lock row, fence, script (PurchaseService.claim)", ("claim (app/inventory/purchases.py",)),
    ("commit_takes: fence + gen check + insert + commit", ("commit_takes",)),
    ("  fence (pg_advisory_xact_lock_shared)", ("fence (app/store/db.py",)),
    ("  generation check (HGET gen)", ("generation (app/inventory/stock.py",)),
    ("  session flush (INSERT)", ("flush (sqlalchemy/orm/session.py",)),
    ("  commit", ("commit (sqlalchemy/orm/session.py",)),
    ("build the Purchase object (ORM instrumentation)", ("__init__ (<string>",)),
    ("dump response (marshmallow schema)", ("dump (marshmallow",)),
    ("error handler (409 body)", ("app/errors.py",)),
    ("sweep index write", ("index (app/inventory/stock.py",)),
]


@dataclass
class Profile:
    name: str
    samples: int = 0
    by_category: Counter = field(default_factory=Counter)
    by_step: Counter = field(default_factory=Counter)
    cpu_ms_per_request: float = 0.0
    files: list[str] = field(default_factory=list)
    note: str = ""

    def share(self, count: int) -> float:
        return 100 * count / self.samples if self.samples else 0.0


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(pid: int, seconds: float, out: Path, fmt: str, rate: int = 250) -> subprocess.Popen:
    """Start py-spy on `pid` and all its subprocesses (the gunicorn workers)."""
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
        # Only request-handling threads: gunicorn's master and idle loops are not a request's cost.
        if not any("handle_request" in f or "handle (gunicorn" in f for f in frames):
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
    """Run `drive()` (a wrk run of about `seconds`) twice: once under py-spy writing collapsed
    stacks (the numbers), once writing the flame graph. Returns the analysed samples."""
    if py_spy() is None:
        return Profile(name, note="py-spy not installed (pip install -e '.[bench]')")
    raw = results / f"profile-{name}.txt"
    svg = results / f"profile-{name}.svg"
    outcome = {}
    for path, fmt in ((raw, "raw"), (svg, "flamegraph")):
        spy = record(pid, seconds, path, fmt)
        outcome[fmt] = drive()
        _, err = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0 or not path.exists():
            return Profile(name, note=f"py-spy failed: {err.strip()[-500:]}")
    profile = analyse(name, raw)
    result = outcome.get("raw")
    if result is not None and result.requests:
        profile.cpu_ms_per_request = result.server_ms_per_request()
    profile.files = [raw.name, svg.name]
    return profile
