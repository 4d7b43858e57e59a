"""End to end: a sale window opens at one instant on every web process at once. 200 reserves
fired around `starts_at` at two gunicorn worker processes: none of them holds anything before
it (the check is in the same Lua step as the stock), and the ones after it sell."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
import requests

from app.core.timeutil import iso
from tests.support.servers import require_postgres
from tests.support.stack import Stack

BUYERS = 200


def test_no_reserve_is_held_before_the_window_opens():
    require_postgres()
    stack = Stack(web_concurrency=2, ttl_seconds=300, sweep_seconds=5).start(workers=1)
    try:
        api = stack.session()
        # Far enough ahead for the loads and the buyers' threads below on a busy machine: the
        # buyers then sleep until their instant, however long the setup took.
        starts = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
        deal = api.post(
            f"{stack.url}/v1/deals",
            json={"title": "Drop", "price_per_unit": 100, "quantity": 1000, "starts_at": iso(starts)},
        ).json()["deal"]
        # Every worker process has the deal loaded before the window opens.
        for _ in range(20):
            assert (
                api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1}).status_code
                == 409
            )
        barrier = threading.Barrier(BUYERS)
        opening = starts.timestamp()
        assert time.time() < opening - 0.5, "the setup took longer than the time left before the opening"

        def buyer(i: int):
            session = requests.Session()
            session.headers.update({"Authorization": api.headers["Authorization"]})
            barrier.wait()
            # Spread over the second around the instant, half before it and half after: wide
            # enough that a busy machine's late wake-ups still leave some before it.
            time.sleep(max(0.0, opening - 0.5 + i * 1.0 / BUYERS - time.time()))
            response = session.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1})
            return response.status_code, response.json()

        with ThreadPoolExecutor(BUYERS) as pool:
            answers = list(pool.map(buyer, range(BUYERS)))
        codes = [status for status, _ in answers]
        assert set(codes) <= {200, 409}, answers
        refused = [body for status, body in answers if status == 409]
        assert all(body["error"] == "not_started" for body in refused)
        with psycopg.connect(stack.database.url.replace("postgresql+psycopg", "postgresql")) as connection:
            created = [
                row[0]
                for row in connection.execute("SELECT created_at FROM purchases WHERE deal_id = %s", (deal["id"],))
            ]
        assert len(created) == codes.count(200) > 0, stack.logs()
        assert refused, "every reserve came after the opening: the test missed the instant"
        assert min(created) >= starts.replace(tzinfo=None), (min(created), starts)
    finally:
        stack.stop()
