"""Every Redis key the service uses, in one place.

All keys of one deal share the hash tag `{deal:ID}`, so every Lua script touches a single hash
slot and runs unchanged on a Redis Cluster. The global keys are only ever changed by
single-key commands.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

PREFIX = "oe"

#: zset: deal id -> earliest end of its holds (ms). The sweeper reads the due part of it, so
#: finding expired holds costs O(deals with expired holds), not O(all holds).
SWEEP_INDEX = f"{PREFIX}:sweep-index"

#: set of deal ids whose live state has been loaded (for `inventory check` and index repair).
LOADED_DEALS = f"{PREFIX}:deals"

#: hash: figures measured outside the web processes (the worker's sweeps, webhook attempts),
#: exported by every web process's /metrics (see app/metrics.py).
SHARED_METRICS = f"{PREFIX}:metrics"


class DealKeys(NamedTuple):
    inv: str
    holds: str
    units: str
    users: str
    claims: str


def deal_keys(deal_id: int) -> DealKeys:
    tag = f"{PREFIX}:{{deal:{deal_id}}}"
    return DealKeys(f"{tag}:inv", f"{tag}:holds", f"{tag}:units", f"{tag}:users", f"{tag}:claims")


def idempotency_lock(account_id: int, key: str) -> str:
    """Held while the first request with an Idempotency-Key runs (a retry meanwhile gets 409)."""
    return f"{PREFIX}:idem:{account_id}:{key}"


def transaction_lock(account_id: int, transaction_id: str) -> str:
    """Held while a v3 purchase with this transaction_id takes stock and commits, so that a
    duplicate arriving meanwhile waits and then answers with the record (instead of taking the
    same stock again and finding it sold out). The id is hashed: it is client text."""
    digest = hashlib.sha256(transaction_id.encode()).hexdigest()[:32]
    return f"{PREFIX}:v3-txn:{account_id}:{digest}"


def sweep_slot(slot: int) -> str:
    """Claimed by the one worker that enqueues the sweep for this time slot."""
    return f"{PREFIX}:sweep-slot:{slot}"


def maintenance_slot(slot: int) -> str:
    return f"{PREFIX}:maintenance-slot:{slot}"
