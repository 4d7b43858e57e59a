"""Idempotency-Key answers: how many stay kept under a sustained rate of keyed writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from app.core.timeutil import to_ms
from app.store.models import IdempotencyRecord


@pytest.fixture
def app_config(app_config):
    return {**app_config, "IDEMPOTENCY_TTL_SECONDS": 60}


def test_kept_answers_stay_as_many_as_one_retention_period_of_writes(services, account, clock):
    """At a sustained rate, the worker's purge keeps the table at what one retention period
    (here 60 s) of keyed writes leaves: 2,000 writes a second for 3 minutes, purged every 30 s
    (the reconciler's interval is 60 s), never holds more than 90 s of them."""
    rate, seconds, purge_every, ttl = 2000, 180, 30, 60
    start = clock()
    most = 0
    for second in range(0, seconds, purge_every):
        rows = [
            {
                "account_id": account[0],
                "key": f"k{second + i // rate}-{i % rate}",
                "fingerprint": "f",
                "status_code": 200,
                "body": "{}",
                "created_at": start + timedelta(seconds=second + i / rate),
            }
            for i in range(rate * purge_every)
        ]
        with services.db.begin() as connection:
            connection.execute(insert(IdempotencyRecord.__table__), rows)
        clock.ms = to_ms(start + timedelta(seconds=second + purge_every))
        services.kept.purge()
        most = max(most, count(services, IdempotencyRecord))
    assert most <= rate * (ttl + 1)
    assert count(services, IdempotencyRecord) >= rate * (ttl - 1)


def count(services, model) -> int:
    with services.db.read() as session:
        return session.scalar(select(func.count()).select_from(model))
