"""The Redis-only path over HTTP: the app itself (auth, marshmallow, the reserve Lua script,
the response schema) with the SQL side of a reserve taken out. What a reserve costs when
nothing is made durable; the stretch target compares durable reserves with it.

Never a way to run the service: holds made here have no SQL row.

    gunicorn --config python:config.gunicorn 'bench.baselines.redisonly:create_app()'
"""

from __future__ import annotations

from flask import Flask

from app import create_app as create_real_app
from app.inventory.purchases import PurchaseService


class _NoSession:
    """Stands in for the SQL session: the reservation is built but never written."""

    def add(self, _obj) -> None:
        pass


def _commit_nothing(self, takes, write, *, undo, idempotency):
    return write(_NoSession())


def create_app() -> Flask:
    PurchaseService.commit_takes = _commit_nothing
    return create_real_app()
