"""Operations end to end, on the Procfile's gunicorn (4 workers) and RQ worker over PostgreSQL:
the dashboard in a real browser (headless Chromium driven by Playwright), /metrics summed across
the gunicorn workers, a webhook delivered and retried by the worker, and JSON logs carrying the
request id from the HTTP request into the job.

The browser test signs in, sees a deal, reserves through the API, watches the numbers change
without a reload, watches the hold expire, and keeps screenshots under artifacts/ (it prints
their paths). With CI=true a missing Chromium fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.devtools.embedded import ROOT
from app.webhooks import signing
from tests.support.receiver import Receiver
from tests.support.servers import require_postgres, unavailable, wait_for
from tests.support.stack import Stack

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Long enough that a loaded machine still sees the hold on the page; short enough to watch it end.
TTL_SECONDS = 10
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def stack():
    require_postgres()
    stack = Stack(
        web_concurrency=4,
        ttl_seconds=TTL_SECONDS,
        sweep_seconds=1,
        extra_env={"WEBHOOK_RETRY_BASE_SECONDS": "1", "WEBHOOK_MAX_RETRIES": "3", "WEBHOOK_ALLOW_PRIVATE_URLS": "true"},
    ).start(workers=1)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        unavailable(f"Chromium is not installed at {CHROMIUM} (Debian packages chromium, chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        unavailable(f"the playwright package is missing: {error}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot(page, name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return str(path)


def cell(page, deal_id: int, column: str) -> str:
    return page.inner_text(f'#deals tr[data-deal-id="{deal_id}"] td.{column}')


def test_the_dashboard_shows_a_hold_live_and_its_expiry(browser, stack):
    api = stack.session()
    deal = api.post(f"{stack.url}/v1/deals", json={"title": "Flash lamp", "price_per_unit": 2500, "quantity": 5})
    deal = deal.json()["deal"]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        # Sign in through the form.
        page.goto(f"{stack.url}/dashboard")
        page.fill("#api_secret", stack.secret)
        page.click("#sign-in button[type=submit]")
        page.wait_for_url(f"{stack.url}/dashboard")
        page.wait_for_selector(f'#deals tr[data-deal-id="{deal["id"]}"]')
        assert "Flash lamp" in page.inner_text("#deals")
        assert (cell(page, deal["id"], "available"), cell(page, deal["id"], "reserved")) == ("5", "0")
        page.evaluate("window.__sameDocument = true")  # gone if the page reloads

        # Reserve through the API; the page catches up by itself.
        held = api.post(f"{stack.url}/v1/purchases/reserve", json={"deal_id": deal["id"], "num_bought": 2}).json()
        held = held["purchase"]
        page.wait_for_function(
            """([dealId, purchaseId]) => {
                const row = document.querySelector(`#deals tr[data-deal-id="${dealId}"]`);
                return row && row.querySelector("td.available").textContent === "3"
                    && row.querySelector("td.reserved").textContent === "2"
                    && document.querySelector(`#holds tr[data-purchase-id="${purchaseId}"]`) !== null;
            }""",
            arg=[deal["id"], held["id"]],
            timeout=15_000,
        )
        hold_row = f'#holds tr[data-purchase-id="{held["id"]}"] td.time-left'
        first = page.inner_text(hold_row)
        assert first.endswith(" s") or first == "ended", first
        page.wait_for_function(
            "([selector, first]) => document.querySelector(selector)?.textContent !== first",
            arg=[hold_row, first],
            timeout=5_000,
        )  # the countdown ticks in the browser
        assert page.locator(f'#purchases tr[data-purchase-id="{held["id"]}"] .state').inner_text() == "reserved"
        screenshot(page, "dashboard-hold")

        # Nobody claims it: the hold ends, the worker sweeps it, the page shows the stock back.
        page.wait_for_function(
            """([dealId, purchaseId]) => {
                const row = document.querySelector(`#deals tr[data-deal-id="${dealId}"]`);
                const purchase = document.querySelector(`#purchases tr[data-purchase-id="${purchaseId}"] .state`);
                return row && row.querySelector("td.available").textContent === "5"
                    && row.querySelector("td.reserved").textContent === "0"
                    && document.querySelector(`#holds tr[data-purchase-id="${purchaseId}"]`) === null
                    && purchase && purchase.textContent === "expired";
            }""",
            arg=[deal["id"], held["id"]],
            timeout=(TTL_SECONDS + 30) * 1000,
        )
        assert page.evaluate("window.__sameDocument") is True
        assert int(page.get_attribute("#updated", "data-polls")) >= 2
        screenshot(page, "dashboard-expired")

        # Sold out is marked.
        api.post(
            f"{stack.url}/v1/purchases",
            json={
                "deal_id": deal["id"],
                "quantity": 5,
                "user_id": "u",
                "credit_card_id": "c",
                "expected_price_per_unit": 2500,
            },
        )
        page.wait_for_selector(f'#deals tr.sold-out[data-deal-id="{deal["id"]}"] .badge', timeout=15_000)

        # The queue page is behind the same sign-in.
        page.goto(f"{stack.url}/dashboard/rq/")
        page.wait_for_selector("text=offer-engine", timeout=15_000)
        screenshot(page, "queue")

        page.goto(f"{stack.url}/dashboard")
        page.click("#sign-out")
        page.wait_for_selector("#api_secret")
        page.goto(f"{stack.url}/dashboard/rq/")
        page.wait_for_selector("#api_secret")  # sent back to the sign-in
    finally:
        page.close()


def scrape(stack) -> dict:
    response = requests.get(f"{stack.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def tcp_sockets(port: int) -> dict[int, tuple[str, int]]:
    """inode -> (TCP state: "0A" listening, "01" established; the peer's port) of the IPv4
    sockets whose local port is `port`."""
    sockets = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets[int(fields[9])] = (fields[3], int(fields[2].rsplit(":", 1)[1], 16))
    return sockets


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_connections_spread_over_every_gunicorn_worker(stack):
    """Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads new connections
    over the workers (with one shared socket, one worker could take most of a burst; see
    config/gunicorn.py)."""
    workers = stack.web_worker_pids()
    assert len(workers) == 4
    clients = []
    try:
        for _ in range(80):  # a burst of keep-alive connections, each answered once
            client = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            clients.append(client)
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
        sockets = tcp_sockets(stack.port)
        our_ports = {client.getsockname()[1] for client in clients}
        listening: dict[int, set[int]] = {}
        connections = Counter()
        for pid in workers:
            held = socket_inodes(pid) & sockets.keys()
            listening[pid] = {inode for inode in held if sockets[inode][0] == "0A"}
            # Only this test's connections (others of the module may still be open).
            connections[pid] = sum(1 for inode in held if sockets[inode][1] in our_ports)
        # One listening socket per worker, none shared.
        assert all(len(inodes) == 1 for inodes in listening.values()), listening
        assert len(set.union(*listening.values())) == len(workers), listening
        # 80 connections hashed over 4 sockets: 20 each on average; a worker with fewer than 4
        # happens by chance about once in 25,000 runs.
        assert sum(connections.values()) == 80, connections
        assert all(connections[pid] >= 4 for pid in workers), connections
    finally:
        for client in clients:
            client.close()


def test_metrics_sum_every_gunicorn_worker_and_show_the_sweeps(stack):
    api = stack.session()
    key = (
        "offer_engine_http_requests_total",
        frozenset({"method": "GET", "endpoint": "/readyz", "status": "200"}.items()),
    )
    before = scrape(stack).get(key, 0)
    for _ in range(40):
        # A new connection each time, so the requests spread over the workers.
        response = requests.get(f"{stack.url}/readyz", headers={"Connection": "close"}, timeout=10)
        assert response.status_code == 200
    assert scrape(stack).get(key, 0) - before == 40
    wait_for(
        lambda: scrape(stack).get(("offer_engine_sweep_duration_seconds_count", frozenset()), 0) >= 2,
        20,
        "the worker's sweeps in /metrics",
    )
    deal = api.post(f"{stack.url}/v1/deals", json={"title": "Gauged", "price_per_unit": 1, "quantity": 7})
    deal = deal.json()["deal"]  # (creating it loads it into Redis)
    samples = scrape(stack)
    assert samples[("offer_engine_sweep_last_finished_timestamp_seconds", frozenset())] > time.time() - 60
    labels = [dict(labels) for name, labels in samples if name == "offer_engine_deal_available_units"]
    assert {"deal_id": str(deal["id"]), "account_id": labels[0]["account_id"]} in labels

    started = time.perf_counter()
    for _ in range(10):
        scrape(stack)
    print(f"\n/metrics scrape under gunicorn: {(time.perf_counter() - started) * 100:.1f} ms each")


def test_a_webhook_is_delivered_and_retried_by_the_worker(stack):
    api = stack.session()
    deal = api.post(f"{stack.url}/v1/deals", json={"title": "Hooked", "price_per_unit": 100, "quantity": 3})
    deal = deal.json()["deal"]
    with Receiver(statuses=[500]) as receiver:
        hook = api.post(f"{stack.url}/v1/webhooks", json={"url": receiver.url, "events": ["purchase.fulfilled"]})
        hook = hook.json()["webhook"]
        bought = api.post(
            f"{stack.url}/v1/purchases",
            json={
                "deal_id": deal["id"],
                "quantity": 1,
                "user_id": "u",
                "credit_card_id": "c",
                "expected_price_per_unit": 100,
            },
            headers={"X-Request-ID": "e2e-webhook-1"},
        )
        assert bought.status_code == 200 and bought.headers["X-Request-ID"] == "e2e-webhook-1"
        wait_for(lambda: len(receiver.received) >= 2, 30, "the delivery and its retry")
    first, second = receiver.received[:2]
    assert (first.answered, second.answered) == (500, 200)
    for attempt in (first, second):
        assert signing.verify(hook["secret"], attempt.headers[signing.SIGNATURE_HEADER], attempt.body)
        assert attempt.headers["X-Request-ID"] == "e2e-webhook-1"
    assert json.loads(second.body)["data"]["purchase"]["id"] == bought.json()["purchase"]["id"]
    wait_for(
        lambda: api.get(f"{stack.url}/v1/webhooks/{hook['id']}").json()["webhook"]["last_status"] == 200,
        10,
        "the delivery recorded",
    )

    # The request id went from the HTTP request, through the job, into the worker's log lines.
    def worker_lines():
        lines = []
        for worker in stack.workers:
            for line in worker.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    lines.append(json.loads(line))
        return lines

    wait_for(
        lambda: any(
            line.get("msg") == "webhook delivered" and line.get("request_id") == "e2e-webhook-1"
            for line in worker_lines()
        ),
        10,
        "the worker's log line with the request id",
    )

    def access_lines():  # the web workers write their access lines in batches, within 0.2 s
        lines = [json.loads(line) for line in stack.web.log_path.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == "e2e-webhook-1" and line.get("msg") == "request"]

    access = wait_for(access_lines, 10, "the web's access line with the request id")
    assert access[0]["path"] == "/v1/purchases" and access[0]["status"] == 200
    assert stack.secret not in stack.web.log_path.read_text()


def test_what_a_dashboard_poll_costs_under_gunicorn(stack):
    with requests.Session() as browser:
        assert browser.get(f"{stack.url}/dashboard?api_secret={stack.secret}", timeout=10).status_code == 200
        browser.get(f"{stack.url}/dashboard/data.json", timeout=10)
        started = time.perf_counter()
        for _ in range(20):
            assert browser.get(f"{stack.url}/dashboard/data.json", timeout=10).status_code == 200
        print(f"\ndashboard data request under gunicorn: {(time.perf_counter() - started) * 50:.1f} ms each")
