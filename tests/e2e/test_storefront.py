"""The example storefront page in a real browser (headless Chromium driven by Playwright), against
the Procfile's gunicorn (2 gevent workers over PostgreSQL): the number on the page follows
reserves made through the API without a reload, the countdown ticks, the waitlist form joins the
queue (no secret) and shows the customer's place, and the page comes back by itself after the
web process is killed and started again on the same port. Every wait is a condition polled in the page with a deadline. Screenshots go to
artifacts/ (their paths are printed). With CI=true a missing Chromium or PostgreSQL fails."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.browser import chromium, screenshot
from tests.support.servers import Process, require_postgres
from tests.support.stack import Stack

#: How long the page may take to show a change (the stream's poll is 100 ms; this is slack for
#: a loaded machine, not an expected delay).
SHOWN_MS = 15_000


@pytest.fixture(scope="module")
def stack():
    require_postgres()
    stack = Stack(web_concurrency=2).start(workers=0)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 900, "height": 900})
    yield page
    page.close()


def public_deal(stack, api, **fields) -> dict:
    body = {"title": "Storefront lamp", "price_per_unit": 2500, "quantity": 5, "public": True, **fields}
    response = api.post(f"{stack.url}/v1/deals", json=body)
    assert response.status_code == 201, response.text
    return response.json()["deal"]


def reserve(stack, api, deal_id: int, units: int) -> None:
    response = api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal_id, "num_bought": units})
    assert response.status_code == 200, response.text


def wait_until_shown(page, available: str, live: bool = True, timeout: int = SHOWN_MS) -> None:
    page.wait_for_function(
        """([available, live]) =>
            document.querySelector("#available").textContent === available
            && (!live || document.querySelector("#live").dataset.state === "live")""",
        arg=[available, live],
        timeout=timeout,
    )


def open_page(page, stack, deal_id: int) -> None:
    page.goto(f"{stack.url}/storefront/{deal_id}")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads


def test_the_page_follows_reserves_without_a_reload(page, stack):
    api = stack.session()
    ends = datetime.now(UTC) + timedelta(hours=2)
    deal = public_deal(stack, api, ends_at=ends.isoformat())
    open_page(page, stack, deal["id"])
    wait_until_shown(page, "5")
    assert page.inner_text("#title") == "Storefront lamp"
    assert "25.00" in page.inner_text("#price")
    assert page.inner_text("#stock") == "Only 5 left"
    assert re.fullmatch(r"Ends in (01:59:\d\d|02:00:00)", page.inner_text("#window"))

    reserve(stack, api, deal["id"], 2)
    wait_until_shown(page, "3")
    reserve(stack, api, deal["id"], 1)
    wait_until_shown(page, "2")
    screenshot(page, "storefront-live")

    bought = api.post(
        f"{stack.url}/v1/purchases",
        json={
            "deal_id": deal["id"],
            "quantity": 2,
            "user_id": "u",
            "credit_card_id": "c",
            "expected_price_per_unit": 2500,
        },
    )
    assert bought.status_code == 200, bought.text
    page.wait_for_function(
        """() => !document.querySelector("#sold-out").hidden
            && document.querySelector("#deal").dataset.state === "sold-out"
            && document.querySelector("#stock").hidden""",
        timeout=SHOWN_MS,
    )
    assert page.inner_text("#sold-out").lower() == "sold out"
    assert "waitlist" in page.inner_text("#waitlist-heading").lower()
    assert page.evaluate("window.__sameDocument") is True
    assert int(page.get_attribute("#deal", "data-events")) >= 4  # connect, 3, 2, sold out
    screenshot(page, "storefront-sold-out")


def test_the_countdown_to_the_sale_ticks(page, stack):
    api = stack.session()
    starts = datetime.now(UTC) + timedelta(seconds=150)
    deal = public_deal(stack, api, starts_at=starts.isoformat())
    open_page(page, stack, deal["id"])
    page.wait_for_function(
        """() => /^On sale in 0[12]:\\d\\d$/.test(document.querySelector("#window").textContent)""",
        timeout=SHOWN_MS,
    )
    first = page.inner_text("#window")
    page.wait_for_function(
        "(first) => document.querySelector('#window').textContent !== first", arg=first, timeout=5_000
    )
    assert page.get_attribute("#deal", "data-state") == "upcoming"
    screenshot(page, "storefront-countdown")


def test_the_waitlist_form_joins_the_queue(page, stack):
    """The form posts to POST /v1/public/deals/:id/waitlist (no secret) and shows the answer:
    the customer's place in the queue, the same place when they join again, and once a unit
    comes back, the offer held for them."""
    api = stack.session()
    deal = public_deal(stack, api, quantity=1)
    open_page(page, stack, deal["id"])
    wait_until_shown(page, "1")
    held = api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 1})
    assert held.status_code == 200, held.text
    page.wait_for_function("""() => !document.querySelector("#sold-out").hidden""", timeout=SHOWN_MS)

    def join(user_id: str) -> str:
        page.evaluate("""() => { document.querySelector("#waitlist-answer").dataset.state = ""; }""")
        page.fill("#user_id", user_id)
        page.click("#waitlist-form button[type=submit]")
        page.wait_for_function(
            """() => ["ok", "error"].includes(document.querySelector("#waitlist-answer").dataset.state)""",
            timeout=SHOWN_MS,
        )
        answer = page.inner_text("#waitlist-answer")
        assert page.get_attribute("#waitlist-answer", "data-state") == "ok", answer
        return answer

    assert join("first@example.com") == "You are on the waitlist: number 1."
    assert join("second@example.com") == "You are on the waitlist: number 2."
    assert join("first@example.com") == "You are on the waitlist: number 1."  # the same entry
    screenshot(page, "storefront-waitlist")
    waiting = api.get(f"{stack.url}/v1/deals/{deal['id']}/waitlist").json()["entries"]
    assert [(e["user_id"], e["position"]) for e in waiting] == [("first@example.com", 1), ("second@example.com", 2)]

    released = api.put(f"{stack.url}/v1/purchases/{held.json()['purchase']['id']}/release")
    assert released.status_code == 200, released.text
    offered = api.get(f"{stack.url}/v1/waitlist/{waiting[0]['id']}").json()["entry"]
    assert offered["state"] == "offered" and offered["purchase_id"]
    # A third customer joins now: nothing is available, the second still waits before them.
    assert join("third@example.com") == "You are on the waitlist: number 2."


def test_the_page_reconnects_after_the_web_process_restarts(page, stack):
    api = stack.session()
    deal = public_deal(stack, api, quantity=10)
    open_page(page, stack, deal["id"])
    wait_until_shown(page, "10")

    stack.web.kill()  # SIGKILL to gunicorn's whole process group: no goodbye to the browser
    page.wait_for_function("""() => document.querySelector("#live").dataset.state !== "live" """, timeout=SHOWN_MS)
    screenshot(page, "storefront-disconnected")

    stack.web = Process("web", stack.env, stack.log_dir).start()  # the same PORT
    stack.wait_ready()
    reserve(stack, api, deal["id"], 4)
    wait_until_shown(page, "6", timeout=60_000)  # the browser's retries, then the new number
    assert page.evaluate("window.__sameDocument") is True
    screenshot(page, "storefront-reconnected")
