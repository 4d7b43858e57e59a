"""Webhooks: registration, and deliveries from the outbox (the relay, then the real RQ worker
class) against a receiver on 127.0.0.1 (retried with back-off after a 500, signed, recorded)."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
import redis
from rq import Queue
from sqlalchemy import select

from app.core import events as ev
from app.observability.logs import request_id
from app.store.models import Webhook, WebhookDelivery, utcnow
from app.store.queue import QUEUE_NAME
from app.webhooks import signing
from tests.support.receiver import Receiver
from tests.support.servers import wait_for


@pytest.fixture
def app_config(app_config):
    return {
        **app_config,
        "WEBHOOK_RETRY_BASE_SECONDS": 1,
        "WEBHOOK_MAX_RETRIES": 3,
        "WEBHOOK_TIMEOUT_SECONDS": 5,
        "WEBHOOK_ALLOW_PRIVATE_URLS": True,  # the receiver runs on 127.0.0.1
    }


@pytest.fixture
def rq_connection(redis_url):
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def queue(rq_connection):
    return Queue(QUEUE_NAME, connection=rq_connection)


@pytest.fixture
def relay(services, monkeypatch):
    """One relay round, as the worker's relay thread runs them."""
    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    return jobs.relay


@pytest.fixture
def work(services, rq_connection, queue, relay):
    """Run the worker the way `python -m workers` does, once, in burst mode: a relay round
    (events numbered and fanned out, lane heads whose back-off has passed enqueued), then every
    queued job, and the jobs they enqueue (a delivered head enqueues its lane's next one)."""
    from workers.__main__ import Worker

    def run() -> None:
        relay()
        Worker([queue], connection=rq_connection).work(burst=True, with_scheduler=True, logging_level="WARNING")

    return run


def register(api, url, events=ev.WEBHOOK_EVENTS) -> dict:
    response = api.post("/v1/webhooks", {"url": url, "events": list(events)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["webhook"]


def deal_of(body: bytes) -> int:
    data = json.loads(body)["data"]
    return data["deal"]["id"] if "deal" in data else data["purchase"]["deal_id"]


# -- registration ----------------------------------------------------------------------------------


def test_register_list_get_and_delete(api, other_api, services):
    created = register(api, "https://example.test/hooks/offer", [ev.PURCHASE_FULFILLED, ev.DEAL_SOLD_OUT])
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert created["events"] == [ev.PURCHASE_FULFILLED, ev.DEAL_SOLD_OUT]
    assert created["last_status"] is None
    listed = api.get("/v1/webhooks").get_json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]  # shown once, at registration
    assert "secret" not in api.get(f"/v1/webhooks/{created['id']}").get_json()["webhook"]
    assert other_api.get(f"/v1/webhooks/{created['id']}").status_code == 404
    assert other_api.request("DELETE", f"/v1/webhooks/{created['id']}").status_code == 404
    assert other_api.get("/v1/webhooks").get_json()["webhooks"] == []
    assert api.request("DELETE", f"/v1/webhooks/{created['id']}").status_code == 204
    assert api.get(f"/v1/webhooks/{created['id']}").status_code == 404
    with services.db.read() as session:
        assert session.query(Webhook).count() == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"url": "ftp://example.test/x", "events": ["purchase.fulfilled"]}, "url"),
        ({"url": "javascript:alert(1)", "events": ["purchase.fulfilled"]}, "url"),
        ({"url": "http://", "events": ["purchase.fulfilled"]}, "url"),
        ({"url": "not a url", "events": ["purchase.fulfilled"]}, "url"),
        ({"url": "https://example.test/" + "a" * 2000, "events": ["purchase.fulfilled"]}, "url"),
        ({"url": "https://example.test/x", "events": []}, "events"),
        ({"url": "https://example.test/x", "events": ["purchase.exploded"]}, "events"),
        ({"url": "https://example.test/x", "events": "purchase.fulfilled"}, "events"),
        ({"url": "https://example.test/x"}, "events"),
        ({"events": ["purchase.fulfilled"]}, "url"),
    ],
)
def test_registration_refuses_bad_urls_and_events(api, body, field):
    response = api.post("/v1/webhooks", body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"] == "validation_failed"
    assert field in response.get_json()["errors"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/",
        "http://localhost:8000/admin",  # a name that resolves to loopback
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata endpoint
        "http://[::1]/",
        "http://0.0.0.0/",
    ],
)
def test_receivers_inside_the_network_are_refused(api, services, url):
    services.webhooks.allow_private = False  # the default; this module's app allows them for its receiver
    response = api.post("/v1/webhooks", {"url": url, "events": ["purchase.fulfilled"]})
    assert response.status_code == 422, response.get_json()
    assert "public receiver" in response.get_json()["errors"]["url"][0]
    assert api.get("/v1/webhooks").get_json()["webhooks"] == []


def test_a_receiver_that_moved_inside_the_network_gets_no_delivery(api, queue, work, services):
    """Registered while allowed (or while its name pointed outside); refused at delivery, once,
    recorded, not retried."""
    deal = api.create_deal(quantity=5)
    with Receiver() as receiver:
        hook = register(api, receiver.url, [ev.PURCHASE_FULFILLED])
        services.webhooks.allow_private = False
        assert api.buy(deal["id"], 1).status_code == 200
        work()
        assert receiver.received == []
    shown = api.get(f"/v1/webhooks/{hook['id']}").get_json()["webhook"]
    assert shown["last_error"].startswith("refused: 127.0.0.1 is not a public address")
    assert len(queue.scheduled_job_registry) == 0 and len(queue) == 0  # nothing left to retry


def test_a_name_that_rebinds_to_a_private_address_gets_no_delivery(api, queue, work, services, monkeypatch):
    """DNS rebinding: the receiver's name resolves to a public address when it is checked and to
    127.0.0.1 when the delivery connects. The connection's own address is checked before any
    byte is sent on it, so the receiver on 127.0.0.1 gets nothing."""
    import socket

    real_getaddrinfo = socket.getaddrinfo
    answers = {"rebind.test": 0}

    def rebinding_getaddrinfo(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        answers[host] += 1
        address = "93.184.215.14" if answers[host] == 1 else "127.0.0.1"  # public, then loopback
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    deal = api.create_deal(quantity=5)
    with Receiver() as receiver:
        hook = register(api, receiver.url.replace("127.0.0.1", "rebind.test"), [ev.PURCHASE_FULFILLED])
        services.webhooks.allow_private = False
        monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
        assert api.buy(deal["id"], 1).status_code == 200
        work()
        assert receiver.received == []
    assert answers["rebind.test"] >= 2  # checked (public), then connected (loopback)
    shown = api.get(f"/v1/webhooks/{hook['id']}").get_json()["webhook"]
    assert shown["last_error"] == "refused: 127.0.0.1 is not a public address"
    assert len(queue.scheduled_job_registry) == 0 and len(queue) == 0  # not retried


def test_deliveries_wait_while_the_queues_redis_is_down(app_config, monkeypatch):
    """The queue's Redis (RQ_REDIS_URL) is down while sales go on: the events wait in SQL, the
    relay's rounds enqueue nothing (and say so), and once the queue answers again (empty, as
    after a restart) every delivery goes out, in order."""
    from app import create_app
    from tests.conftest import empty_stores
    from tests.support.api import ApiClient
    from tests.support.servers import RedisServer
    from workers import jobs
    from workers.__main__ import Worker

    queue_redis = RedisServer().start()
    app = create_app({**app_config, "RQ_REDIS_URL": queue_redis.url})
    services = app.extensions["offer_engine"]
    empty_stores(services)
    connection = redis.Redis.from_url(queue_redis.url)
    monkeypatch.setattr(jobs, "SERVICES", services)
    try:
        _, secret = services.accounts.create("acme")
        api = ApiClient(app.test_client(), secret)
        deal = api.create_deal(quantity=5)
        with Receiver() as receiver:
            register(api, receiver.url, [ev.PURCHASE_FULFILLED])
            queue_redis.kill()
            assert api.buy(deal["id"], 2).status_code == 200  # the sale does not need the queue
            assert api.buy(deal["id"], 1).status_code == 200
            down = jobs.relay()
            assert (down["events"], down["deliveries"], down["enqueued"]) == (2, 2, 0)
            queue_redis.start()  # empty, as after a restart without persistence
            queue = Queue(QUEUE_NAME, connection=connection)

            def delivered():
                jobs.relay()  # the lane's head is offered again a second after the failed enqueue
                Worker([queue], connection=connection).work(burst=True, logging_level="WARNING")
                return len(receiver.received) == 2

            wait_for(delivered, 20, "both deliveries", interval=0.25)
            quantities = [json.loads(r.body)["data"]["purchase"]["quantity"] for r in receiver.received]
            assert quantities == [2, 1]  # both, in the order they happened
    finally:
        connection.close()
        services.close()
        queue_redis.stop()


def test_an_account_has_at_most_twenty(api):
    for i in range(20):
        register(api, f"https://example.test/{i}")
    response = api.post("/v1/webhooks", {"url": "https://example.test/21", "events": ["deal.sold_out"]})
    assert response.status_code == 409
    assert response.get_json()["error"] == "too_many_webhooks"


# -- deliveries -------------------------------------------------------------------------------------


class RequestIds(logging.Handler):
    """Records (message, request id in force) for every log line."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append((record.getMessage(), request_id.get()))


def test_a_delivery_is_retried_after_a_500_signed_and_recorded(api, queue, relay, work, services, caplog):
    caplog.set_level(logging.INFO)
    deal = api.create_deal(quantity=5)
    with Receiver(statuses=[500]) as receiver:
        hook = register(api, receiver.url, [ev.PURCHASE_FULFILLED])
        held = api.reserved(deal["id"], 2)
        claim = api.claim(held["id"], "user-7", headers={"X-Request-ID": "checkout-42"})
        assert claim.status_code == 200
        assert len(queue) == 0  # the request enqueues nothing: the relay does
        assert relay()["enqueued"] == 1
        assert len(queue) == 1
        job = queue.jobs[0]
        assert job.meta["request_id"] == "checkout-42"
        assert hook["url"] not in job.description and held["id"] not in job.description

        capture = RequestIds()
        logging.getLogger().addHandler(capture)
        try:
            work()  # first attempt: the receiver answers 500, the job is scheduled 1 s later
            assert [r.answered for r in receiver.received] == [500]
            first = api.get(f"/v1/webhooks/{hook['id']}").get_json()["webhook"]
            assert (first["last_status"], first["consecutive_failures"]) == (500, 1)
            assert first["last_error"] == "receiver answered 500"

            def retried():
                work()
                return len(receiver.received) == 2

            wait_for(retried, 20, "the retry after the back-off", interval=0.25)
        finally:
            logging.getLogger().removeHandler(capture)

    attempts = receiver.received
    assert [r.answered for r in attempts] == [500, 200]
    assert attempts[0].body == attempts[1].body  # the same bytes, signed again
    for number, attempt in enumerate(attempts, start=1):
        headers = attempt.headers
        assert headers[signing.EVENT_HEADER] == ev.PURCHASE_FULFILLED
        assert headers[signing.ATTEMPT_HEADER] == str(number)
        assert headers["X-Request-ID"] == "checkout-42"
        assert headers["Content-Type"] == "application/json"
        assert signing.verify(hook["secret"], headers[signing.SIGNATURE_HEADER], attempt.body)
        assert not signing.verify("whsec_wrong", headers[signing.SIGNATURE_HEADER], attempt.body)
        assert not signing.verify(hook["secret"], headers[signing.SIGNATURE_HEADER], attempt.body + b" ")
    assert attempts[0].headers[signing.DELIVERY_HEADER] == attempts[1].headers[signing.DELIVERY_HEADER]
    payload = json.loads(attempts[1].body)
    assert payload["type"] == ev.PURCHASE_FULFILLED and payload["id"].startswith("evt_")
    # The message id comes from the event and the webhook: any relay, any attempt, the same.
    assert attempts[0].headers["webhook-id"] == f"dlv_{payload['id'][4:]}_{hook['id']}"
    assert payload["data"]["via"] == "claim"
    assert payload["data"]["purchase"]["id"] == held["id"]
    assert payload["data"]["purchase"]["fulfillment_state"] == "fulfilled"
    assert payload["data"]["purchase"]["user_id"] == "user-7"
    assert len(payload["data"]["purchase"]["coupons"]) == 2

    recorded = api.get(f"/v1/webhooks/{hook['id']}").get_json()["webhook"]
    assert (recorded["last_status"], recorded["consecutive_failures"], recorded["last_error"]) == (200, 0, None)
    assert recorded["last_success_at"] is not None
    assert recorded["last_delivery_id"] == attempts[1].headers[signing.DELIVERY_HEADER]
    # The job's log lines carry the request id of the request that enqueued it.
    assert ("webhook attempt failed", "checkout-42") in capture.lines
    assert ("webhook delivered", "checkout-42") in capture.lines


def test_each_event_reaches_the_webhooks_that_asked_for_it(api, other_api, services, account, queue, work):
    with Receiver() as everything, Receiver() as sold_out_only, Receiver() as rival:
        register(api, everything.url)
        register(api, sold_out_only.url, [ev.DEAL_SOLD_OUT])
        register(other_api, rival.url)

        small = api.create_deal(quantity=2)
        first = api.reserved(small["id"], 2)  # leaves 0: deal.sold_out
        assert api.claim(first["id"]).status_code == 200  # purchase.fulfilled
        big = api.create_deal(quantity=10)
        released = api.reserved(big["id"], 1)
        assert api.release(released["id"]).status_code == 200  # purchase.released
        assert api.release(released["id"]).status_code == 200  # nothing more
        assert api.buy(big["id"], 1).status_code == 200  # purchase.fulfilled (direct)
        ended = services.purchases.reserve(account[0], big["id"], 1, now=utcnow() - timedelta(seconds=301))
        report = services.sweeper.sweep()  # purchase.expired, from the worker's sweep
        assert [token for token, _ in report.expired_records] == [ended.token]
        work()

    def kinds(receiver):
        return sorted(json.loads(r.body)["type"] for r in receiver.received)

    assert kinds(everything) == sorted(
        [ev.PURCHASE_RESERVED, ev.DEAL_SOLD_OUT, ev.PURCHASE_FULFILLED]  # the small deal
        + [ev.PURCHASE_RESERVED, ev.PURCHASE_RELEASED, ev.PURCHASE_FULFILLED]  # the big one
        + [ev.PURCHASE_RESERVED, ev.PURCHASE_EXPIRED]  # the hold the sweep expired
    )
    assert kinds(sold_out_only) == [ev.DEAL_SOLD_OUT]
    assert rival.received == []
    by_type = {json.loads(r.body)["type"]: json.loads(r.body)["data"] for r in everything.received}
    assert by_type[ev.DEAL_SOLD_OUT] == {"deal": {"id": small["id"], "available": 0}}
    # In order per deal: the small deal's hold, its sell-out (the same commit), its claim.
    small_deal = [json.loads(r.body)["type"] for r in everything.received if deal_of(r.body) == small["id"]]
    assert small_deal == [ev.PURCHASE_RESERVED, ev.DEAL_SOLD_OUT, ev.PURCHASE_FULFILLED]
    assert by_type[ev.PURCHASE_RELEASED]["purchase"]["id"] == released["id"]
    assert by_type[ev.PURCHASE_EXPIRED]["purchase"]["id"] == ended.token
    assert by_type[ev.PURCHASE_EXPIRED]["purchase"]["fulfillment_state"] == "expired"


def test_release_after_the_hold_ended_is_an_expiry(api, services, account, queue, work):
    deal = api.create_deal(quantity=3)
    with Receiver() as receiver:
        register(api, receiver.url, [ev.PURCHASE_RELEASED, ev.PURCHASE_EXPIRED])
        ended = services.purchases.reserve(account[0], deal["id"], 1, now=utcnow() - timedelta(seconds=301))
        assert api.release(ended.token).get_json()["purchase"]["fulfillment_state"] == "expired"
        work()
    assert [json.loads(r.body)["type"] for r in receiver.received] == [ev.PURCHASE_EXPIRED]


def test_no_webhooks_means_nothing_enqueued(api, queue, relay):
    deal = api.create_deal(quantity=1)
    held = api.reserved(deal["id"], 1)
    assert api.claim(held["id"]).status_code == 200
    assert relay() == {"busy": False, "events": 3, "deliveries": 0, "enqueued": 0, "full": False}
    assert len(queue) == 0


def test_a_deleted_webhook_gets_nothing_more(api, queue, relay, work):
    deal = api.create_deal(quantity=2)
    with Receiver() as receiver:
        hook = register(api, receiver.url, [ev.PURCHASE_FULFILLED])
        held = api.reserved(deal["id"], 1)
        api.claim(held["id"])
        relay()
        assert len(queue) == 1
        api.request("DELETE", f"/v1/webhooks/{hook['id']}")
        work()
        assert receiver.received == []
        assert api.buy(deal["id"], 1).status_code == 200
        assert len(queue) == 0


def test_a_receiver_that_does_not_answer_is_recorded_without_its_url(api, queue, work, services):
    from tests.support.servers import free_port

    deal = api.create_deal(quantity=2)
    hook = register(api, f"http://127.0.0.1:{free_port()}/nobody", [ev.PURCHASE_FULFILLED])
    api.claim(api.reserved(deal["id"], 1)["id"])
    work()
    recorded = api.get(f"/v1/webhooks/{hook['id']}").get_json()["webhook"]
    assert recorded["last_status"] is None
    assert recorded["last_error"].startswith("no answer: ")
    with services.db.read() as session:
        [delivery] = session.scalars(select(WebhookDelivery)).all()
        attempted = session.get(Webhook, hook["id"]).last_attempt_at
    # Waiting for its retry: pending, leased to nobody until its back-off (1 s here) ends.
    assert (delivery.state, delivery.attempts, delivery.leased_by) == ("pending", 1, None)
    assert delivery.lease_until == attempted + timedelta(seconds=1)
