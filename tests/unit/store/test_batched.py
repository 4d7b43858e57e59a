"""Reads made together (app/store/batched.py): each waiter gets its own key's value, however
many wait at once; a failed fetch fails every waiter of its batch; an interrupted reader is
started again by the next read."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.store.batched import Answer, Batched


def test_every_waiter_gets_its_own_keys_value_and_waiters_share_fetches():
    fetched: list[list[int]] = []
    release = threading.Event()

    def fetch_many(keys):
        release.wait(5)  # the first fetch holds on while the others queue up behind it
        fetched.append(keys)
        return {key: key * 10 for key in keys if key % 3}

    batched = Batched(fetch_many, "test-reads")
    asking = threading.Semaphore(0)

    def ask(key):
        asking.release()
        return batched.get(key)

    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = {key: pool.submit(ask, key) for key in range(40)}
        for _ in range(40):
            assert asking.acquire(timeout=10)
        release.set()
        answers = {key: future.result(timeout=10) for key, future in futures.items()}
    assert answers == {key: (key * 10 if key % 3 else None) for key in range(40)}
    assert sorted(key for keys in fetched for key in keys) == list(range(40))
    assert len(fetched) < 40  # read together


def test_a_failed_fetch_fails_its_waiters_and_the_next_read_is_served():
    calls = []

    def fetch_many(keys):
        calls.append(keys)
        if len(calls) == 1:
            raise ConnectionError("store down")
        return {key: "up" for key in keys}

    batched = Batched(fetch_many, "test-reads")
    with pytest.raises(ConnectionError):
        batched.get("a")
    assert batched.get("a") == "up"


def test_an_interrupted_reader_is_started_again_by_the_next_read(monkeypatch):
    calls = []
    ended = []  # how reader threads ended: the interrupt ends the first one
    monkeypatch.setattr(threading, "excepthook", lambda hook: ended.append(hook.exc_type))

    def fetch_many(keys):
        calls.append(keys)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {key: "again" for key in keys}

    batched = Batched(fetch_many, "interrupted-reads")
    with pytest.raises(KeyboardInterrupt):
        batched.get("a")
    for reader in [t for t in threading.enumerate() if t.name == "interrupted-reads"]:
        reader.join(10)  # the interrupted one, ending (within this test, not during a later one)
    assert ended == [KeyboardInterrupt]
    assert batched.get("a") == "again"


def test_an_answer_is_set_once_and_waited_for_any_number_of_times():
    answer = Answer()
    assert not answer.done()
    with pytest.raises(TimeoutError):
        answer.wait(timeout=0.01)
    threading.Timer(0.01, answer.set, args=("done",)).start()
    assert answer.wait() == "done"
    assert answer.done() and answer.wait() == "done" and answer.wait(timeout=0) == "done"
    failed = Answer()
    failed.set(error=ValueError("refused"))
    for _ in range(2):
        with pytest.raises(ValueError, match="refused"):
            failed.wait()
