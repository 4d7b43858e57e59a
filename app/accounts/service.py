"""Accounts and their API secrets.

A secret is 192 random bits shown once; only its SHA-256 is stored. Authentication hashes the
presented secret, finds the account by that hash, and compares in constant time. Results are
cached in the process for a few seconds so the hot path does not query SQL per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select

from app.store.db import Database
from app.store.models import Account

SECRET_PREFIX = "oe_"
CACHE_SECONDS = 10.0
CACHE_MAX = 10_000


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class AccountRef:
    id: int
    name: str


class AccountService:
    def __init__(self, db: Database, cache_seconds: float = CACHE_SECONDS) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, AccountRef | None]] = {}
        self._lock = threading.Lock()

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
        with self._lock:
            self._cache.pop(old, None)
        return secret

    def list(self) -> list[AccountRef]:
        with self.db.read() as session:
            return [AccountRef(a.id, a.name) for a in session.scalars(select(Account).order_by(Account.id))]

    def authenticate(self, secret: str | None) -> AccountRef | None:
        if not secret or not isinstance(secret, str) or len(secret) > 200:
            return None
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        with self.db.read() as session:
            account = session.scalar(select(Account).where(Account.secret_hash == digest))
        found = None
        if account is not None and hmac.compare_digest(account.secret_hash, digest):
            found = AccountRef(account.id, account.name)
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (now + self.cache_seconds, found)
        return found
