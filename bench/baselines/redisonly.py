"""The Redis-only path over HTTP: the app itself (auth, limits, parsing, the reserve Lua script,
the answer) with the SQL side of a reserve taken out. What a reserve costs when nothing is made
durable; the stretch target compares durable reserves with it.

Never a way to run the service: holds made here have no SQL row.

    gunicorn --config python:config.gunicorn 'bench.baselines.redisonly:create_app()'
"""

from __future__ import annotations

from flask import Flask

from app import create_app as create_real_app
from app.inventory.purchases import PurchaseService
from app.store import purchase_rows as rows


def _commit_nothing(self, values, take, idempotency):
    """In place of the group commit: the reservation's answer, with no row written."""
    return rows.record(values)


def _commit_takes_nothing(self, takes, write, *, undo, idempotency, write_takes_fence=False):
    raise RuntimeError("the Redis-only baseline serves reserves only")


def create_app() -> Flask:
    PurchaseService._group_commit = _commit_nothing
    PurchaseService.commit_takes = _commit_takes_nothing
    app = create_real_app({"GROUP_COMMIT": True})
    return app
