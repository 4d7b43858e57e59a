"""Idempotency-Key, the domain half: what a keyed write is, and the answers kept for keys.

A write sent with an Idempotency-Key has one effect however often it is sent. Three things
make it so, none of them a lookup before the write:

* A purchase that a keyed write creates gets a token derived from (account, key)
  (`Keyed.token`). The Lua script's per-token check finds a retry's earlier take in Redis
  (running, committed or abandoned), and the SQL row's unique token refuses a second row.
* The first successful answer is kept in the same SQL transaction as the write's effect
  (`KeptAnswers.keep`, in the committer's batch), so it exists exactly when the effect does.
* A keyed write that is refused (sold out, or its token or key already taken) looks for a kept
  answer before it answers (`KeptAnswers.exactly_once`): a retry of a request that succeeded
  gets that answer again (`Replay`), byte for byte; a 4xx is never kept, so a retry of a
  refused request is decided afresh.

The HTTP half (app/web/api/idempotency.py) reads the header, fingerprints the request and turns a
`Replay` into the kept response.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from app.core.errors import DomainError, KeyReused, RequestInProgress, Unavailable
from app.store import kept_answers as store
from app.store.batched import Batched
from app.store.db import Database
from app.store.models import utcnow

T = TypeVar("T")

#: Outcomes that say nothing about whether the key succeeded before (a store unreachable, an
#: unknown commit, a duplicate still running): answered as they are, without a lookup.
UNDECIDED = (Unavailable, RequestInProgress, KeyReused)


def fingerprint(method: str, path: str, body: Any) -> str:
    # The stdlib encoder: it takes what any JSON body can hold (huge integers, lone surrogates).
    canonical = json.dumps(body, sort_keys=True).encode() if body is not None else b""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def derived_token(account_id: int, key: str) -> str:
    """The purchase token of a purchase created by (account, key): 144 bits of its SHA-256, in
    the same 24 URL-safe characters as a random token."""
    digest = hashlib.sha256(f"{account_id}\n{key}".encode("utf-8", "surrogatepass")).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


@dataclass(frozen=True)
class Kept:
    """A kept answer: replayed as it is, with `Idempotent-Replayed: true`."""

    status_code: int
    body: str
    fingerprint: str


class Replay(Exception):  # noqa: N818 (not an error: the edge answers with `kept`)
    """The request's key already has a kept answer: answer with it."""

    def __init__(self, kept: Kept) -> None:
        super().__init__("replay")
        self.kept = kept


@dataclass(frozen=True)
class Keyed:
    """A write sent with an Idempotency-Key."""

    account_id: int
    key: str
    #: What tells this request from another one sent with the same key: the fingerprint, or how
    #: to compute it. Most keyed writes never need it (a sold-out refusal whose key has no kept
    #: answer), so the edge gives the computation and it runs at most once, when asked.
    identity: str | Callable[[], str]
    #: Turns the write's result into the (status, JSON body) the client is sent.
    render: Callable[[Any], tuple[int, str]]
    #: The token of a purchase this write creates; derived from the key unless the key's earlier
    #: purchase is past the retention period (`renewed`).
    token: str = ""

    def __post_init__(self) -> None:
        if not self.token:
            object.__setattr__(self, "token", derived_token(self.account_id, self.key))

    @functools.cached_property
    def fingerprint(self) -> str:
        return self.identity if isinstance(self.identity, str) else self.identity()

    @property
    def pair(self) -> tuple[int, str]:
        return (self.account_id, self.key)

    def answer(self, result: Any) -> tuple[int, str]:
        """`render(result)`, made once for a result: the answer kept for the key's retries and
        the one this request is sent are the same bytes."""
        made = self.__dict__.get("_answer")
        if made is None or made[0] is not result:
            made = (result, self.render(result))
            self.__dict__["_answer"] = made  # frozen: as functools.cached_property does
        return made[1]

    def renewed(self, token: str) -> Keyed:
        """The same request with a fresh purchase token: its key outlived its earlier purchase
        (kept past the retention period), whose token stays with that purchase."""
        return replace(self, token=token)


class KeptAnswers:
    def __init__(self, db: Database, ttl_seconds: int, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)
        self.clock = clock
        # A keyed refusal (a flash sale's sold-out answers) looks for its kept answer: together.
        reads = db.kept_reads()
        self._lookups: Batched[tuple[int, str], store.KeptRow] = Batched(
            lambda pairs: store.find_many(reads, pairs, self.clock() - self.ttl), "kept-answer-reads"
        )

    def keep(self, connection: Any, answered: Sequence[tuple[Keyed, Any]]) -> set[tuple[int, str]]:
        """Keep each keyed write's answer, rendered from its result, in `connection`'s
        transaction. Returns the (account, key) pairs whose key is held by another request's
        kept answer: those writes must not commit."""
        now = self.clock()
        rows = []
        for keyed, result in answered:
            status, body = keyed.answer(result)
            rows.append(store.KeptRow(keyed.account_id, keyed.key, keyed.fingerprint, status, body, now))
        return store.keep(connection, rows, now - self.ttl)

    def drop(self, connection: Any, pairs: Sequence[tuple[int, str]]) -> None:
        store.drop(connection, pairs)

    def find(self, keyed: Keyed) -> Kept | None:
        row = self._lookups.get(keyed.pair)
        return None if row is None else Kept(row.status_code, row.body, row.fingerprint)

    def replay_if_kept(self, keyed: Keyed | None) -> None:
        """Raise `Replay` when the key has a kept answer for this request, `KeyReused` when it has
        one for another request; return when it has none."""
        kept = self.find(keyed) if keyed is not None else None
        if kept is None:
            return
        if kept.fingerprint != keyed.fingerprint:
            raise KeyReused()
        raise Replay(kept)

    def exactly_once(self, keyed: Keyed | None, write: Callable[[], T], refusals: tuple[type, ...] = ()) -> T:
        """Run `write`; when it is refused (a domain error) and the key has a kept answer, that
        answer wins: the earlier request with this key succeeded."""
        if keyed is None:
            return write()
        try:
            return write()
        except UNDECIDED:
            raise
        except (DomainError, *refusals):
            self.replay_if_kept(keyed)
            raise

    def purge(self, batch: int = 10_000) -> int:
        """Forget answers past the retention period (the worker calls this)."""
        return store.purge(self.db, self.clock() - self.ttl, batch)
