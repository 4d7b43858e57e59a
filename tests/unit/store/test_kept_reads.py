"""KeptReads: a Batched reader's reads on one connection kept between them (PostgreSQL), which
must see every commit, survive the server ending its session, and close with the Database."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.store.db import Database


@pytest.fixture
def db(database_url):
    db = Database(database_url)
    yield db
    db.dispose()


#: What only a kept PostgreSQL connection does (SQLite's reads go through Database.reading).
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def names(kept) -> list[str]:
    with kept.reading() as connection:
        return list(connection.execute(text("SELECT name FROM accounts ORDER BY id")).scalars())


def add_account(db: Database, name: str) -> None:
    with db.begin() as connection:
        connection.execute(
            text("INSERT INTO accounts (name, secret_hash, created_at) VALUES (:name, :name, CURRENT_TIMESTAMP)"),
            {"name": name},
        )


def backend_pid(kept) -> int:
    with kept.reading() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_each_read_sees_what_is_committed_when_it_runs(db):
    with db.begin() as connection:
        connection.execute(text("DELETE FROM accounts WHERE name IN ('ann', 'bob')"))
    kept = db.kept_reads()
    assert "ann" not in names(kept)
    add_account(db, "ann")
    assert "ann" in names(kept) and "bob" not in names(kept)
    add_account(db, "bob")
    assert {"ann", "bob"} <= set(names(kept))


@on_postgresql
def test_the_reads_share_one_connection(db):
    kept = db.kept_reads()
    first = backend_pid(kept)
    names(kept)
    assert backend_pid(kept) == first


@on_postgresql
def test_a_session_the_server_ended_fails_one_read_and_the_next_one_reconnects(db):
    db.ping_after_idle = 3600  # not idle: the dead connection is used as it is
    kept = db.kept_reads()
    before = backend_pid(kept)
    with db.begin() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": before}).scalar_one()
    with pytest.raises(Exception):  # noqa: B017 (the driver's error for a closed session)
        names(kept)
    assert backend_pid(kept) != before


@on_postgresql
def test_a_connection_left_idle_is_checked_by_the_pool_before_it_is_used_again(db):
    kept = db.kept_reads()
    before = backend_pid(kept)
    with db.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": before})
    db.ping_after_idle = 0  # every read after the last one finds it idle: the pool pings it
    assert backend_pid(kept) != before  # no read failed


@on_postgresql
def test_dispose_closes_the_kept_connection(db):
    kept = db.kept_reads()
    pid = backend_pid(kept)
    db.dispose()
    observer = Database(db.url)
    try:
        with observer.reading() as connection:
            alive = connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar_one()
    finally:
        observer.dispose()
    assert alive == 0
