"""Group commit: the reservations of concurrent requests in one SQL transaction.

A durable reserve's own work is a Lua script and one row; what it paid for was everything
around the row: a pool checkout, BEGIN, the deal's fence, a Redis round trip for the
generation check, COMMIT, each once per request. Here one committer thread per process takes
whatever reservations are waiting, and for all of them at once takes the fences of their deals,
checks the generations in one pipelined round trip, inserts the rows in one statement, and
commits. A batch of one deal (all of a flash sale's) on PostgreSQL saves a round trip: the
first row's INSERT takes the fence, and the generation is checked after the inserts, before
the commit. Each request is answered only after the commit that holds its row.

The protocol of docs/consistency.md is unchanged: every take happened in Redis before it was
submitted; its deal's shared fence is held from before its generation is checked until the
commit. A reservation whose deal was rebuilt meanwhile is left out of the batch (a one-deal
batch holding one is rolled back and written again without it) and told `Stale` (its request
takes the units again). If the batch fails before its commit, every
request in it is told why and undoes its own take; if the commit itself fails, they are told it
is uncertain, and drop their deals' live state as a single write would.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from app.idempotency import Idempotency
from app.store import purchase_rows as rows
from app.store.db import Database

from .errors import IdempotencyReplay, Stale
from .stock import LiveStock, Take

log = logging.getLogger(__name__)

#: Most rows one transaction takes (a batch is whatever is waiting, up to this).
MAX_BATCH = 128


class CommitUncertain(Exception):
    """The batch's COMMIT failed: it may or may not have happened."""


class _NotAllFresh(Exception):
    """A one-deal batch held a take from before a rebuild: its transaction is rolled back."""


@dataclass
class Pending:
    values: dict[str, Any]
    take: Take
    idempotency: Idempotency | None = None
    result: Future = field(default_factory=Future)


class GroupCommitter:
    def __init__(self, db: Database, stock: LiveStock, max_batch: int = MAX_BATCH) -> None:
        self.db = db
        self.stock = stock
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0  # counted for tests and metrics
        self.rows = 0

    def commit(self, values: dict[str, Any], take: Take, idempotency: Idempotency | None = None) -> rows.PurchaseRecord:
        """Insert a reservation's row in the next batch; returns once that batch committed."""
        self._ensure_started()
        pending = Pending(values, take, idempotency)
        self._queue.put(pending)
        return pending.result.result()

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
            try:
                self._commit(batch)
            except BaseException as error:  # never let the thread die with requests waiting
                for item in batch:
                    if not item.result.done():
                        item.result.set_exception(error)

    def _commit(self, batch: list[Pending]) -> None:
        try:
            done = self._commit_together(batch)
        except IntegrityError:
            # One row broke a constraint (an Idempotency-Key used twice at once): the batch was
            # rolled back; commit each on its own so that only that one fails.
            for item in batch:
                self._commit_alone(item)
            return
        for item, outcome in done:
            if isinstance(outcome, BaseException):
                item.result.set_exception(outcome)
            else:
                item.result.set_result(outcome)

    def _commit_together(self, batch: list[Pending]) -> list[tuple[Pending, Any]]:
        deal_ids = sorted({item.take.deal_id for item in batch})
        fence = self.db.shared_fence(deal_ids[0]) if len(deal_ids) == 1 else None
        if fence is not None:  # one deal, on PostgreSQL: a flash sale's batches all are
            try:
                return self._transaction(batch, lambda connection: self._insert_then_check(connection, batch, fence))
            except _NotAllFresh:
                pass  # rolled back; the general path below sorts the fresh from the stale
        return self._transaction(batch, lambda connection: self._check_then_insert(connection, batch, deal_ids))

    def _check_then_insert(self, connection: Connection, batch: list[Pending], deal_ids: list[int]) -> list[Pending]:
        """Fence every deal, check the generations, insert the fresh rows; returns those."""
        for deal_id in deal_ids:
            self.db.fence(connection, deal_id, exclusive=False)
        generations = self.stock.generations(deal_ids)
        fresh = [item for item in batch if generations.get(item.take.deal_id) == item.take.gen]
        if fresh:
            rows.insert_purchases(connection, [item.values for item in fresh])
        return fresh

    def _insert_then_check(self, connection: Connection, batch: list[Pending], fence: tuple[int, int]) -> list[Pending]:
        """One deal's batch: the INSERT takes the deal's shared fence (one round trip fewer than
        fencing first), and the generation is checked after the inserts, still under the fence
        and before the commit, as the protocol requires. Any stale take rolls the transaction
        back whole (_NotAllFresh)."""
        if len(batch) == 1:
            rows.insert_purchase(connection, batch[0].values, fence)
        else:  # one statement with the fence (a single row costs less the plain way)
            rows.insert_purchases(connection, [item.values for item in batch], fence)
        generation = self.stock.generation(batch[0].take.deal_id)
        if any(item.take.gen != generation for item in batch):
            raise _NotAllFresh()
        return batch

    def _transaction(
        self, batch: list[Pending], write: Callable[[Connection], list[Pending]]
    ) -> list[tuple[Pending, Any]]:
        """`write` the batch's rows in one transaction; each item's outcome: its record, or Stale."""
        committing = False
        try:
            with self.db.begin() as connection:
                fresh = write(connection)
                if fresh:
                    records = [rows.record(item.values) for item in fresh]
                    for item, record in zip(fresh, records, strict=True):
                        if item.idempotency is not None:
                            item.idempotency.record(connection, record)
                committing = True
            self.batches += 1
            self.rows += len(fresh)
        except (IntegrityError, _NotAllFresh):
            raise
        except BaseException as error:
            if committing:
                raise CommitUncertain() from error
            raise
        outcomes: dict[int, Any] = (
            {id(item): record for item, record in zip(fresh, records, strict=True)} if fresh else {}
        )
        return [(item, outcomes.get(id(item), Stale())) for item in batch]

    def _commit_alone(self, item: Pending) -> None:
        try:
            [(_, outcome)] = self._commit_together([item])
        except IntegrityError:
            item.result.set_exception(IdempotencyReplay())
            return
        except BaseException as error:
            item.result.set_exception(error)
            return
        if isinstance(outcome, BaseException):
            item.result.set_exception(outcome)
        else:
            item.result.set_result(outcome)
