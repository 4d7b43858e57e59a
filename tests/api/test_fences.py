"""The fence of docs/consistency.md on the paths that lock a purchase first: a claim and an
extension hold their deal's shared fence from before their Redis call until their commit, so a
rebuild of the deal cannot read SQL in between. (On PostgreSQL the locking SELECT takes it.)"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from app.store.db import FENCE_NAMESPACE, fence_key


def a_rebuild_could_fence(services, deal_id: int) -> bool:
    """Whether a rebuild could take the deal's exclusive fence right now, tried without waiting
    from a connection of its own."""
    db = services.db
    if db.is_sqlite:  # the fence is the write lock
        probe = sqlite3.connect(db.engine.url.database, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            probe.close()
    with db.engine.connect() as connection:
        free = connection.execute(
            text("SELECT pg_try_advisory_xact_lock(:ns, :key)"), {"ns": FENCE_NAMESPACE, "key": fence_key(deal_id)}
        ).scalar_one()
        connection.rollback()
        return free


@pytest.mark.parametrize("write", ["claim", "extend"])
def test_the_deals_fence_is_held_during_the_redis_call(api, services, account, monkeypatch, write):
    deal = api.create_deal(quantity=5)["id"]
    token = services.purchases.reserve(account[0], deal, 1).token
    assert a_rebuild_could_fence(services, deal)
    original = getattr(services.stock, write)
    during = []

    def probing(*args, **kwargs):
        during.append(a_rebuild_could_fence(services, deal))
        return original(*args, **kwargs)

    monkeypatch.setattr(services.stock, write, probing)
    if write == "claim":
        assert services.purchases.claim(account[0], token, user_id="u1").fulfillment_state == "fulfilled"
    else:
        services.purchases.extend(account[0], token, seconds=60)
    assert during == [False]
    assert a_rebuild_could_fence(services, deal)  # let go at the commit
