"""The write protocol: the one place that takes stock in Redis, commits in SQL and answers.

Every write that changes live stock (reserve, claim, release, extend, direct and v3 purchases)
is a short flow over this unit (purchases.py, ledger.py):

    take (Lua script) → settle what it found → commit (group_commit.py) → answer

The order makes a crash between the two stores undersell, never oversell: units are taken in
Redis before their row commits (a take without a row holds units nobody buys until its hold
ends or the reconciler rebuilds the deal), and given back only after the row says so (release).
See docs/consistency.md for the whole argument.

This unit owns, once for all of them:

* loading a deal from SQL when its live state is missing, then running the script again;
* a take that finds the token's earlier take (`Found`): its own (the same script ran twice) is
  used as it is; another attempt's is committed (the key's kept answer is replayed), still
  running (409 `request_in_progress`), or abandoned (adopted, so that a retry after a crash
  succeeds within seconds);
* retrying, from a fresh read, a write whose take went stale (a rebuild ran between its script
  and its commit) or whose row moved on;
* for a keyed write, a refusal answers with the key's kept answer when there is one;
* and, through the committer, every compensation: a take is given back only by the attempt
  that made it and only when its row certainly did not commit; when the commit's outcome is
  unknown, the deal is rebuilt from SQL instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from app.core.errors import RequestInProgress, Unavailable
from app.core.idempotency import KeptAnswers, Keyed
from app.core.timeutil import from_ms, to_ms
from app.store import purchase_rows
from app.store.db import Database
from app.store.models import utcnow

from .errors import InventoryError, NotLoaded, Skipped, Stale
from .group_commit import NO_HOOKS, GroupCommitter, Hooks
from .rebuild import Rebuilder
from .stock import Ask, Found, LiveStock, Taken
from .writes import Write

T = TypeVar("T")

#: How often a write is tried when its take went stale or its row moved on under it.
ATTEMPTS = 3
#: A take another attempt made less than this long ago belongs to a request still running (the
#: retry is told 409 request_in_progress); an older one was abandoned and is adopted. Either
#: way nothing is taken twice: this only decides between waiting and taking over.
IN_PROGRESS_MS = 2_000


def new_nonce() -> str:
    """Names one attempt of one write: only it can give back what it took."""
    return secrets.token_hex(8)


@dataclass(eq=False)
class Protocol:
    db: Database
    stock: LiveStock
    rebuilder: Rebuilder
    committer: GroupCommitter
    kept: KeptAnswers
    clock: Callable[[], datetime] = utcnow
    in_progress_ms: int = IN_PROGRESS_MS
    hooks: Hooks = NO_HOOKS

    def now(self, now: datetime | None = None) -> datetime:
        """Now (or `now`), to the millisecond: the precision Redis keeps, so both stores hold
        the same instant."""
        return from_ms(to_ms(now or self.clock()))

    def began(self, now: datetime | None = None) -> int:
        """When a request began (ms): what a write whose name its retries share tells its
        scripts (`Order.since_ms`), so a refusal given to a later retry refuses it too."""
        return to_ms(self.now(now))

    def run(
        self,
        keyed: Keyed | None,
        attempt: Callable[[str], T],
        *,
        on_skipped: Callable[[Skipped], None] | None = None,
    ) -> T:
        """Run `attempt(nonce)` until it commits or is refused: again, with a new nonce, when
        its take went stale or its write was left out (after looking for the key's kept
        answer, and telling `on_skipped`)."""

        def attempts() -> T:
            for _ in range(ATTEMPTS):
                try:
                    return attempt(new_nonce())
                except Stale:
                    continue
                except Skipped as skipped:
                    self.kept.replay_if_kept(keyed)
                    if on_skipped is not None:
                        on_skipped(skipped)
            raise Unavailable("the deal's live state kept changing under this write; retry")

        return self.kept.exactly_once(keyed, attempts)

    def take(self, deal_id: int, script: Callable[[], T]) -> T:
        """Run a deal's script; if the deal is not in Redis, load it from SQL and run it again."""
        [result] = self._loading([deal_id], lambda _todo: [script()])
        if isinstance(result, InventoryError):
            self.hooks.at("refused", deal_id=deal_id, script=script)
        if isinstance(result, Exception):
            raise result
        self.hooks.at("took", deal_id=deal_id, script=script)
        return result

    def settle(
        self,
        got: Taken | Found,
        *,
        nonce: str,
        account_id: int,
        keyed: Keyed | None = None,
        user_id: str = "",
        creates: bool = True,
    ) -> Taken:
        """What this attempt holds after its script: its take, or the take its token already
        had (see the module docstring). Raises `Replay` (the key's kept answer), `KeyReused`,
        `RequestInProgress`, `Skipped` (a committed take: the row decides) or `Stale` (the
        take vanished meanwhile: take again). `creates`: the write creates the token's row (a
        reserve or a purchase), so a row with the token means the take is committed."""
        if isinstance(got, Taken):
            return got
        if got.nonce == nonce:
            return got.as_taken(account_id)
        if not got.nonce:
            raise Skipped("taken")  # loaded from SQL: its row exists
        self.kept.replay_if_kept(keyed)
        if creates and self._committed(got.token):
            raise Skipped("taken")  # committed, its answer no longer kept: the row decides
        now_ms = to_ms(self.clock())
        if now_ms - got.born_ms < self.in_progress_ms:
            raise RequestInProgress()
        if self.stock.adopt(got, nonce, now_ms, user_id):
            return got.as_taken(account_id, nonce)
        raise Stale()

    def _committed(self, token: str) -> bool:
        with self.db.reading() as connection:
            return purchase_rows.exists(connection, token)

    def take_all(
        self,
        asks: Sequence[Ask],
        settle: Callable[[Taken | Found], Taken],
        refused: Callable[[int, Exception], Exception] = lambda _deal_id, error: error,
    ) -> list[Taken]:
        """Takes on several deals, one ask each (in the order given: by deal id, the order
        fences are taken in), in one round trip, all or none: when one is refused (the first
        refusal in that order, as `refused(deal_id, error)` names it), the ones made are given
        back."""
        got = self._take_loading(asks)
        takes: list[Taken] = []
        try:
            for ask, result in zip(asks, got, strict=True):
                if isinstance(result, Exception):
                    error = refused(ask.order.deal_id, result)
                    if error is result:
                        raise result
                    raise error from result
            for result in got:
                takes.append(settle(result))
        except Exception:
            self.committer.give_back([*takes, *_own(asks[len(takes) :], got[len(takes) :])])
            raise
        return takes

    def _take_loading(self, asks: Sequence[Ask]) -> list[Taken | Found | Exception | None]:
        """`LiveStock.take_many`, loading the deals not in Redis (see `_loading`). Failures are
        returned, not raised: `take_all` gives back what the others took."""
        deal_ids = [ask.order.deal_id for ask in asks]
        got = self._loading(deal_ids, lambda todo: self.stock.take_many([asks[at] for at in todo]))
        self.hooks.at("took", deal_ids=deal_ids)
        return got

    def _loading(self, deal_ids: Sequence[int], run: Callable[[list[int]], Sequence[Any]]) -> list[Any]:
        """`run(todo)` answers one result (or failure) per position in `todo` (positions in
        `deal_ids`); the positions answered `NotLoaded` have their deal loaded from SQL and are
        run again. Failures are returned, not raised."""
        got: list[Any] = [None] * len(deal_ids)
        todo = list(range(len(deal_ids)))
        for _ in range(ATTEMPTS):
            try:
                results = run(todo)
            except Exception as error:  # noqa: BLE001 (nothing of these ran, or its reply is lost)
                results = [error] * len(todo)
            for at, result in zip(todo, results, strict=True):
                got[at] = result
            todo = [at for at in todo if isinstance(got[at], NotLoaded)]
            if not todo:
                break
            for at in todo:
                try:
                    self.rebuilder.ensure_loaded(deal_ids[at])
                except Exception as error:  # noqa: BLE001
                    got[at] = error
            todo = [at for at in todo if isinstance(got[at], NotLoaded)]
        for at in todo:
            got[at] = Unavailable("the deal's live state could not be loaded; retry")
        return got

    def commit(self, write: Write, takes: Sequence[Taken] = (), keyed: Keyed | None = None) -> Any:
        self.hooks.at("committing", write=write)
        answer = self.committer.commit(write, takes, keyed)
        self.hooks.at("answered", write=write)
        return answer


def _own(asks: Sequence[Ask], got: Sequence[Taken | Found | Exception | None]) -> list[Taken]:
    """The takes among `got` that this attempt made and did not settle: to give back."""
    own = []
    for ask, result in zip(asks, got, strict=True):
        if isinstance(result, Taken):
            own.append(result)
        elif isinstance(result, Found) and result.nonce == ask.order.nonce:
            own.append(result.as_taken(ask.order.account_id))  # its script ran twice
    return own
