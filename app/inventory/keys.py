"""Every Redis key of the inventory, in one place (the queue's keys are in app/store/queue.py,
the shared figures' in app/store/figures.py).

All keys of one deal share the hash tag `{deal:ID}`, so every Lua script touches a single hash
slot and runs unchanged on a Redis Cluster. The global keys are only ever changed by
single-key commands.
"""

from __future__ import annotations

from typing import NamedTuple

PREFIX = "oe"

#: zset: deal id -> earliest end of its holds (ms). The sweeper reads the due part of it, so
#: finding expired holds costs O(deals with expired holds), not O(all holds).
SWEEP_INDEX = f"{PREFIX}:sweep-index"

#: set of deal ids whose live state has been loaded (for `inventory check` and index repair).
LOADED_DEALS = f"{PREFIX}:deals"


class DealKeys(NamedTuple):
    """A deal's live state (lua/lib.lua describes each key). Every script gets all of them, in
    this order."""

    inv: str
    holds: str
    units: str
    users: str
    marks: str
    meta: str
    holders: str
    holding: str
    waiting: str
    offers: str
    offered: str
    refused: str  # last: a rebuild (load.lua) replaces all the others

    @property
    def live(self) -> list[str]:
        """The keys a rebuild replaces and `LiveStock.invalidate` drops: all but `refused`
        (what was answered stays answered)."""
        return [key for name, key in zip(self._fields, self, strict=True) if name != "refused"]


def deal_keys(deal_id: int) -> DealKeys:
    tag = f"{PREFIX}:{{deal:{deal_id}}}"
    return DealKeys(*(f"{tag}:{name}" for name in DealKeys._fields))
