"""The commit half of the write protocol: every write's SQL, in batches, with the fences, the
generation check, the kept answers and every compensation.

A request submits its write (writes.py) with the takes its scripts made in Redis, and waits.
A committer thread per process takes whatever writes are waiting and, in one transaction:

1. takes the shared fence of every deal the batch's takes touched (a rebuild holds the
   exclusive side), and checks in one round trip that each deal's live state is still the
   generation its take saw; a take from before a rebuild is not in the live state any more, so
   its write is left out (`Stale`). A batch of one deal whose writes all take the fence in
   their own statement (reservations, claims) writes first and checks after, still under the
   fence; a stale take there rolls it back, and the batch commits the general way instead;
2. keeps the answers of keyed writes (app/core/idempotency.py); a key whose answer is already kept
   by another request leaves its write out;
3. applies the writes, kind by kind (a batch of reservations is one statement; two writes of
   one row, such as two claims of a purchase, go one after the other, as they would alone); a
   write whose token or row was taken first is left out, and its kept answer dropped;
4. writes the events of the writes that applied to the outbox, in one statement (their
   `events()`, and a `deal.sold_out` for each take that left its deal with nothing available;
   app/inventory/outbox.py), so that an event exists if and only if its change committed;
5. commits.

Then it answers each request, and it alone compensates, so that a request that stops waiting
(a timeout, a killed greenlet, Ctrl-C) never undoes what may still commit:

* a write left out, or a batch that failed before its COMMIT: its takes are given back, each
  only if its attempt still owns it (LiveStock.give_back), so an undo never touches a take
  another attempt adopted, and running it twice is harmless; a take the attempt adopted itself
  is never given back (its maker may have committed it);
* a COMMIT whose outcome is unknown: nothing is undone by arithmetic; the deals' live state is
  dropped and rebuilt from SQL on next use ("outcome unknown: let SQL decide");
* an interrupt that is not an error (KeyboardInterrupt, GreenletExit, a process dying): nothing
  at all. Takes left in Redis without a row only hold units nobody can buy until their hold ends
  or the reconciler rebuilds the deal: an undersell, never an oversell.

With `threaded=False` (GROUP_COMMIT=false) each request commits its own write the same way, in
its own thread: a batch of one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from app.core.errors import Unavailable
from app.core.idempotency import KeptAnswers, Keyed
from app.core.timeutil import to_ms
from app.observability.logs import job_meta
from app.store import outbox as outbox_rows
from app.store.batched import Answer
from app.store.db import Database
from app.store.models import utcnow

from . import outbox
from .after_commit import best_effort
from .errors import Skipped, Stale
from .stock import LiveStock, Taken
from .writes import Write

log = logging.getLogger(__name__)

#: Most writes one transaction takes (a batch is whatever is waiting, up to this).
MAX_BATCH = 128


class Hooks:
    """Points in the protocol where a test may act (tests/unit/inventory/test_explorer.py
    injects faults and schedules attempts there). Here they do nothing."""

    def at(self, step: str, **context: Any) -> None:
        return None


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class Committed:
    answer: Any


@dataclass
class Pending:
    write: Write
    takes: Sequence[Taken]
    keyed: Keyed | None = None
    #: The request's id and trace context (`job_meta`), taken on the request's thread: its
    #: events' delivery jobs carry them.
    meta: dict | None = None
    result: Answer = field(default_factory=Answer)

    @property
    def deal_ids(self) -> set[int]:
        return {take.deal_id for take in self.takes}


class _Uncertain(Exception):
    """The COMMIT failed and may or may not have happened (the deals are invalidated)."""

    def __init__(self, answer: Unavailable) -> None:
        super().__init__(str(answer))
        self.answer = answer


class _StaleInBatch(Exception):
    """A fence-in-the-statement batch held a take from before a rebuild: roll it back and commit
    the batch the general way, which sorts the fresh from the stale before writing."""


@dataclass(eq=False)
class GroupCommitter:
    db: Database
    stock: LiveStock
    kept: KeptAnswers
    _: KW_ONLY
    threaded: bool = True
    max_batch: int = MAX_BATCH
    hooks: Hooks = NO_HOOKS
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0  # counted for tests and metrics
        self.rows = 0

    def commit(self, write: Write, takes: Sequence[Taken] = (), keyed: Keyed | None = None) -> Any:
        """Commit `write` (whose `takes` were made in Redis); returns its answer once committed.
        Raises `Stale` or `Skipped` when it was left out (its takes given back), and the
        batch's error when the batch failed (its takes given back, or its deals invalidated
        when the COMMIT's outcome is unknown: then `Unavailable`)."""
        pending = Pending(write, tuple(takes), keyed, job_meta() or None)
        if self.threaded:
            self._ensure_started()
            self._queue.put(pending)
        else:
            self.run_batch([pending])
        return pending.result.wait().answer

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)

    # -- the committer thread -------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    # Started lazily: in the process that serves requests (after gunicorn forks).
                    self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self.run_batch(batch)

    # -- one batch ------------------------------------------------------------------------

    def run_batch(self, batch: list[Pending]) -> None:
        """Commit `batch` and settle every item's answer (see the module docstring)."""
        try:
            outcomes = self._commit_each_alone_on_constraint(batch)
        except _Uncertain as error:
            outcomes = [error.answer] * len(batch)
        except Exception as error:  # rolled back: nothing of the batch committed
            outcomes = [error] * len(batch)
        except BaseException as error:  # an interrupt: settle the waiters, undo nothing
            for item in batch:
                if not item.result.done():
                    item.result.set(error=error)
            raise
        for item, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Committed):
                item.result.set(outcome)
                continue
            if not isinstance(outcome, Unavailable):
                self._give_back(item)
            item.result.set(error=outcome)

    def _commit_each_alone_on_constraint(self, batch: list[Pending]) -> list[Any]:
        try:
            return self._commit(batch)
        except IntegrityError:
            if len(batch) == 1:
                raise
            # One write broke a constraint the writes do not expect: the batch was rolled back;
            # commit each on its own so that only that one fails.
            outcomes: list[Any] = []
            for item in batch:
                try:
                    outcomes.extend(self._commit([item]))
                except _Uncertain as error:
                    outcomes.append(error.answer)
                except Exception as error:
                    outcomes.append(error)
            return outcomes

    def _commit(self, batch: list[Pending]) -> list[Any]:
        """One transaction; each item's outcome: Committed, Stale() or Skipped(). Failures
        before the COMMIT give every take back and raise; an uncertain COMMIT invalidates."""
        deal_ids = sorted({deal_id for item in batch for deal_id in item.deal_ids})
        fence = self.db.shared_fence(deal_ids[0]) if len(deal_ids) == 1 else None
        if fence is not None and all(type(item.write).takes_fence for item in batch):
            try:
                return self._transaction(batch, deal_ids, lambda conn: self._write_then_check(conn, batch, fence))
            except _StaleInBatch:
                pass  # rolled back; the general way below leaves the stale out before writing
        return self._transaction(batch, deal_ids, lambda conn: self._check_then_write(conn, batch, deal_ids))

    def _check_then_write(self, connection: Connection, batch: list[Pending], deal_ids: list[int]) -> list[Any]:
        if deal_ids:
            self.db.fence(connection, deal_ids, exclusive=False)
        generations = self.stock.generations(deal_ids) if deal_ids else {}
        outcomes: list[Any] = [None] * len(batch)
        fresh = []
        for at, item in enumerate(batch):
            if all(generations.get(take.deal_id) == take.gen for take in item.takes):
                fresh.append(at)
            else:
                outcomes[at] = Stale()
        self._write(connection, batch, fresh, outcomes, None)
        return outcomes

    def _write_then_check(self, connection: Connection, batch: list[Pending], fence: tuple[int, int]) -> list[Any]:
        """One deal, and kinds that each take the fence in their own statement (a flash sale's
        batches of reservations; a checkout's reservations and claims): write first, then check
        the generation, still under the fence and before the commit, as the protocol requires.
        A batch whose every write was left out (its keys taken) wrote nothing and needs no
        fence."""
        outcomes: list[Any] = [None] * len(batch)
        self._write(connection, batch, list(range(len(batch))), outcomes, fence)
        takes = [take for item in batch for take in item.takes]  # a cart's start has none
        generation = self.stock.generation(takes[0].deal_id) if takes else None
        if any(take.gen != generation for take in takes):
            raise _StaleInBatch()
        return outcomes

    def _write(
        self, connection: Connection, batch: list[Pending], fresh: list[int], outcomes: list[Any], fence
    ) -> None:
        """Keep the fresh keyed writes' answers, then apply the writes whose key was free. Of
        two writes with one key in a batch, the second is left out: it finds the first one's
        answer once the batch committed (or retries, if the first did not commit)."""
        first_with_key: dict[tuple[int, str], int] = {}
        for at in fresh:
            keyed = batch[at].keyed
            if keyed is None:
                continue
            if keyed.pair in first_with_key:
                outcomes[at] = Skipped("key")
            else:
                first_with_key[keyed.pair] = at
        answered = [(batch[at].keyed, batch[at].write.answer) for at in first_with_key.values()]
        taken_keys = self.kept.keep(connection, answered) if answered else set()
        by_kind: dict[type, list[int]] = defaultdict(list)
        for at in fresh:
            item = batch[at]
            if outcomes[at] is not None:
                continue
            if item.keyed is not None and item.keyed.pair in taken_keys:
                outcomes[at] = Skipped("key")
            else:
                by_kind[type(item.write)].append(at)
        unkept = []
        events = []
        now = self.clock()
        for kind, positions in by_kind.items():
            for at, ok in self._apply(connection, kind, batch, positions, fence):
                item = batch[at]
                if ok:
                    outcomes[at] = Committed(item.write.answer)
                    events += outbox.rows([*item.write.events(), *outbox.sold_out(item.takes)], now, item.meta)
                else:
                    outcomes[at] = Skipped("taken")
                    if item.keyed is not None:
                        unkept.append(item.keyed.pair)
        if unkept:
            self.kept.drop(connection, unkept)
        outbox_rows.insert_events(connection, events)

    @staticmethod
    def _apply(connection: Connection, kind: type, batch: list[Pending], positions: list[int], fence):
        """(position, applied) of the writes at `positions`, of one kind: together, in rounds
        (round n holds the n-th write of each row, `Write.row`), so that no statement applies
        two writes of one row."""
        rounds: list[list[int]] = []
        writes_of: dict[Any, int] = defaultdict(int)
        for at in positions:
            row = batch[at].write.row
            n = writes_of[row]
            writes_of[row] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(at)
        for together in rounds:
            yield from zip(
                together, kind.apply_all(connection, [batch[at].write for at in together], fence), strict=True
            )

    def _transaction(
        self, batch: list[Pending], deal_ids: list[int], write: Callable[[Connection], list[Any]]
    ) -> list[Any]:
        committing = False
        try:
            with self.db.begin() as connection:
                outcomes = write(connection)
                self.hooks.at("in_transaction", batch=batch)
                committing = True
            self.hooks.at("after_commit", batch=batch)
        except (IntegrityError, _StaleInBatch, _Uncertain):
            raise
        except Exception as error:
            if not committing:
                raise  # rolled back: run_batch gives every take back
            for deal_id in deal_ids:
                best_effort(self.stock.invalidate, deal_id)
            log.warning("commit outcome unknown; deals invalidated", extra={"deals": deal_ids})
            raise _Uncertain(Unavailable("the database commit failed and its outcome is unknown; retry")) from error
        self.batches += 1
        self.rows += sum(isinstance(outcome, Committed) for outcome in outcomes)
        return outcomes

    def _give_back(self, item: Pending) -> None:
        self.give_back(item.takes)

    def give_back(self, takes: Sequence[Taken]) -> None:
        """Undo takes (each only while its attempt owns it); a take that cannot be
        undone (Redis unreachable) has its deal invalidated instead. An adopted take is left as
        it is: the attempt that made it may have committed it (until its hold ends, or the
        reconciler rebuilds the deal, it holds units nobody buys: an undersell)."""
        for take in takes:
            if take.adopted or not take.nonce:
                continue
            try:
                self.stock.give_back(take.deal_id, take.token, take.nonce, to_ms(self.clock()))
            except Exception:
                log.warning("give-back failed; invalidating the deal", extra={"deal_id": take.deal_id})
                best_effort(self.stock.invalidate, take.deal_id)
