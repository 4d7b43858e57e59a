"""Accounts and their API secrets.

A secret is 192 random bits shown once; only its SHA-256 is stored. Authentication hashes the
presented secret, finds the account by that hash, and compares in constant time. Results are
cached in the process for a few seconds so the hot path does not query SQL per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from app.core.ttlcache import MISSING, TTLCache
from app.store.db import Database
from app.store.models import Account

SECRET_PREFIX = "oe_"
CACHE_SECONDS = 10.0
CACHE_MAX = 10_000
#: How long this process trusts that a signed-in account's secret has not been rotated (the
#: dashboard's session check, `stored`).
STORED_CACHE_SECONDS = 5.0


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class AccountRef:
    id: int
    name: str


@dataclass(frozen=True)
class StoredAccount(AccountRef):
    """An account with the hash of its current secret (to check a session made with it)."""

    secret_hash: str


class AccountService:
    def __init__(
        self,
        db: Database,
        cache_seconds: float = CACHE_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.clock = clock
        #: secret hash -> the account (None: no account has it)
        self._by_secret: TTLCache[str, AccountRef | None] = TTLCache(cache_seconds, CACHE_MAX)
        #: account id -> the account with its secret hash (None: no such account)
        self._stored: TTLCache[int, StoredAccount | None] = TTLCache(STORED_CACHE_SECONDS, CACHE_MAX)

    def create(self, name: str) -> tuple[AccountRef, str]:
        secret = new_secret()
        with self.db.transaction() as session:
            account = Account(name=name, secret_hash=hash_secret(secret))
            session.add(account)
            session.flush()
            return AccountRef(account.id, account.name), secret

    def rotate_secret(self, account_id: int) -> str:
        secret = new_secret()
        with self.db.transaction() as session:
            account = session.get(Account, account_id)
            if account is None:
                raise LookupError(f"no account {account_id}")
            old = account.secret_hash
            account.secret_hash = hash_secret(secret)
        self._by_secret.forget(old)
        self._stored.forget(account_id)
        return secret

    def list(self) -> list[AccountRef]:
        with self.db.read() as session:
            return [AccountRef(a.id, a.name) for a in session.scalars(select(Account).order_by(Account.id))]

    def authenticate(self, secret: str | None) -> AccountRef | None:
        if not secret or not isinstance(secret, str) or len(secret) > 200:
            return None
        digest = hash_secret(secret)
        now = self.clock()
        found = self._by_secret.get(digest, now)
        if found is not MISSING:
            return found
        with self.db.read() as session:
            account = session.scalar(select(Account).where(Account.secret_hash == digest))
        found = None
        if account is not None and hmac.compare_digest(account.secret_hash, digest):
            found = AccountRef(account.id, account.name)
        self._by_secret.put(digest, found, now)
        return found

    def stored(self, account_id: int) -> StoredAccount | None:
        """The account with its current secret hash, from a copy at most STORED_CACHE_SECONDS old."""

        def load() -> StoredAccount | None:
            with self.db.read() as session:
                row = session.execute(select(Account.name, Account.secret_hash).where(Account.id == account_id)).first()
            return None if row is None else StoredAccount(account_id, row.name, row.secret_hash)

        return self._stored.fetch(account_id, self.clock(), load)

    def forget_cached(self) -> None:
        """Forget every cached lookup (tests; an operator's script after a bulk change)."""
        self._by_secret.clear()
        self._stored.clear()
