"""Accounts: secrets stored only as hashes."""

from __future__ import annotations


def test_secrets_are_stored_hashed(services, account):
    from sqlalchemy import select

    from app.store.models import Account

    _, secret = account
    with services.db.read() as session:
        stored = session.scalar(select(Account.secret_hash))
    assert secret not in stored and len(stored) == 64
    assert len(secret) >= 3 + 32  # oe_ + 192 random bits in base64
