"""The SQL connection: engine, sessions, and the per-deal fence.

No Flask here: the web app, the worker and the CLI all build a `Database` from a URL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

# Namespace of our advisory locks, so they cannot collide with another application's.
FENCE_NAMESPACE = 0x0E0E

#: A pooled PostgreSQL connection unused for longer than this is pinged before it is handed out
#: (see `Database._ping_when_idle`).
PING_AFTER_IDLE_SECONDS = 1.0


#: A deal's fence key is its id cut to PostgreSQL's int4 (pg_advisory_xact_lock(int4, int4)).
FENCE_KEY_MASK = 0x7FFFFFFF


#: The fences of deals (:keys, in that order: a volatile function in the select list runs after
#: the ORDER BY), exclusive and shared.
_FENCES = {
    exclusive: text(f"SELECT {fn}(:ns, k) FROM unnest(CAST(:keys AS integer[])) WITH ORDINALITY AS f(k, i) ORDER BY i")
    for exclusive, fn in ((True, "pg_advisory_xact_lock"), (False, "pg_advisory_xact_lock_shared"))
}


def fence_key(deal_id: int) -> int:
    return deal_id & FENCE_KEY_MASK


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here (the driver we ship)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_IDLE_SINCE = "offer_engine.idle_since"


def _send_lists_in_binary(dbapi_connection, _record) -> None:
    """Batches go to PostgreSQL as one array per column (`unnest`). In psycopg's text format every
    element of such an array is quoted and escaped in Python, about 30 µs for a JSON body of a
    kept answer or an event; in the binary format each is just its bytes with a length."""
    from psycopg.types.array import ListBinaryDumper

    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _note_idle_since(_dbapi_connection, record) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pool_timeout: int = 5,
        echo: bool = False,
    ) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = self._sqlite_engine(parsed, echo)
        else:
            self.engine = create_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                # Not SQLAlchemy's pre-ping: a round trip before every transaction, where under
                # load a connection is back in use within milliseconds. `_ping_when_idle` pings
                # only a connection that sat unused for a while.
                pool_pre_ping=False,
                echo=echo,
                connect_args={"connect_timeout": 3},
            )
            self.ping_after_idle = PING_AFTER_IDLE_SECONDS
            event.listen(self.engine, "connect", _send_lists_in_binary)
            event.listen(self.engine, "checkin", _note_idle_since)
            event.listen(self.engine, "checkout", self._ping_when_idle)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._kept: list[KeptReads] = []

    def _ping_when_idle(self, dbapi_connection, record, _proxy) -> None:
        """A connection that sat in the pool may have died meanwhile (PostgreSQL restarted, or
        an idle-session timeout, or an operator ended it): without this, the first transaction
        on each such connection failed with a 503. A failed ping makes SQLAlchemy drop every
        connection pooled so far and hand out a new one, so nobody sees the restart once it is
        over. Connections in steady use are not pinged: a flash sale pays nothing."""
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < self.ping_after_idle:
            return
        try:
            self.engine.dialect.do_ping(dbapi_connection)
        except self.engine.dialect.loaded_dbapi.Error as error:
            raise InvalidatePoolError(f"pooled connection is dead: {error}") from error

    @staticmethod
    def _sqlite_engine(parsed, echo: bool) -> Engine:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, _record) -> None:
            # We issue BEGIN ourselves (below); pysqlite's implicit transactions would start
            # too late for the write lock to act as the fence.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection) -> None:
            # SQLite has one writer at a time. Taking the write lock at BEGIN makes every
            # write transaction exclusive, which is what the fence needs (see `fence`).
            mode = "IMMEDIATE" if connection.get_execution_options().get("sqlite_write", True) else "DEFERRED"
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in one write transaction, for Core statements (the hot paths): committed
        on success, rolled back on error. On SQLite it holds the write lock from the start."""
        with self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def orm(self, connection: Connection) -> Iterator[Session]:
        """ORM objects written inside a `begin()` transaction (flushed on exit, not committed)."""
        with Session(bind=connection, expire_on_commit=False, autoflush=False) as session:
            yield session
            session.flush()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads that need no snapshot across statements (each one sees what
        is committed when it runs): no transaction around them, so one round trip per read
        instead of three (BEGIN, the query, ROLLBACK). On SQLite it takes no write lock."""
        options = {"sqlite_write": False} if self.is_sqlite else {"isolation_level": "AUTOCOMMIT"}
        with self.engine.connect().execution_options(**options) as connection:
            yield connection

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads only (on SQLite it does not take the write lock)."""
        if self.is_sqlite:
            connection = self.engine.connect().execution_options(sqlite_write=False)
            with connection, Session(connection, expire_on_commit=False) as session:
                yield session
        else:
            with self.sessions() as session:
                yield session

    def fence(self, session: Session | Connection, deal_ids: Sequence[int], *, exclusive: bool) -> None:
        """Lock deals `deal_ids` against rebuilds until the transaction ends, in the order given
        (by deal id, so that no two writers wait on each other), in one statement.

        A batch of writes holds the shared side from before it checks that its takes in Redis
        are still of the live generation until its commit; a rebuild of a deal from SQL holds
        the exclusive side. So a rebuild never reads SQL while a write already applied in Redis
        is still uncommitted. On SQLite every write transaction is already exclusive (BEGIN
        IMMEDIATE).
        """
        if self.is_sqlite:
            # Begin now (BEGIN IMMEDIATE, see _begin): the write lock must be held from here,
            # not from the transaction's first statement, which may come after a Redis call.
            # (A `begin()` connection has begun already.)
            if isinstance(session, Session):
                session.connection()
            return
        keys = [fence_key(deal_id) for deal_id in deal_ids]
        session.execute(_FENCES[exclusive], {"ns": FENCE_NAMESPACE, "keys": keys})

    def shared_fence(self, deal_id: int) -> tuple[int, int] | None:
        """The (namespace, key) of the deal's fence for a statement to take it along with its own
        work (`purchase_rows.insert_reservations`, `fulfil_all`); None on SQLite, where the transaction is the fence."""
        return None if self.is_sqlite else (FENCE_NAMESPACE, fence_key(deal_id))

    def kept_reads(self) -> KeptReads:
        """Reads like `reading`'s on one connection kept between them (see KeptReads)."""
        kept = KeptReads(self)
        self._kept.append(kept)
        return kept

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def dispose(self) -> None:
        for kept in self._kept:
            kept.close()
        self.engine.dispose()


class KeptReads:
    """`Database.reading`, on one connection kept open between reads, for a thread that reads
    all the time (a Batched reader: a claim's purchase, a keyed refusal's kept answer). Checking
    a connection out of the pool and back in, switching it to autocommit and back, costs more CPU
    than the query itself: a lookup of two kept answers took 390 µs through the pool and 230 µs
    on a kept connection (PostgreSQL on this machine, best of 7 runs of 1,000).

    One read at a time (a lock: a second thread waits rather than share the connection). A read
    that fails drops the connection, and one unused for longer than the pool's ping interval goes
    back to the pool, whose checkout pings it: as through the pool, a restart of PostgreSQL is
    seen by at most the reads already under way. SQLite reads go through `reading` as they are."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        #: The process that opened the connection (a forked child must not use its parent's).
        self._opened_in = 0
        self._used_at = 0.0

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        if self.db.is_sqlite:
            with self.db.reading() as connection:
                yield connection
            return
        with self._lock:
            connection = self._connection_now()
            try:
                yield connection
            except BaseException:
                self._close()  # its state is unknown: an error, or an interrupt mid-read
                raise
            self._used_at = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connection_now(self) -> Connection:
        if self._connection is not None:
            if self._opened_in != os.getpid():
                self._connection = None  # the parent's: left to it, never closed from here
            elif time.monotonic() - self._used_at > self.db.ping_after_idle:
                self._close()
        if self._connection is None:
            self._connection = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._opened_in = os.getpid()
        return self._connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


def is_connection_error(error: BaseException) -> bool:
    """True when `error` means the database could not be reached (as opposed to bad SQL)."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)
