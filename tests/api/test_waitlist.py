"""The waitlist that promotes itself (SPEC, "Waitlist that promotes itself"), over HTTP with a
controlled clock; SQL and Redis read back."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.core.timeutil import to_ms


@pytest.fixture
def app_config(app_config):
    return {**app_config, "WAITLIST_OFFER_SECONDS": 600}


def live(services, deal_id, clock):
    snap = services.stock.snapshot(deal_id, clock.ms)
    return snap.available, snap.reserved, snap.sold


def join(api, deal_id, user_id):
    return api.post(f"/v1/deals/{deal_id}/waitlist", {"user_id": user_id})


def entry(api, entry_id):
    response = api.get(f"/v1/waitlist/{entry_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["entry"]


def sold_out_deal(api, services, account, quantity=1):
    """A deal whose every unit is held by one reservation each."""
    deal = api.create_deal(quantity=quantity)["id"]
    holds = [services.purchases.reserve(account[0], deal, 1).token for _ in range(quantity)]
    return deal, holds


def test_joining_queues_the_customer_once(api, services, account, clock):
    deal, _ = sold_out_deal(api, services, account)
    first = join(api, deal, "ann")
    assert first.status_code == 201
    ann = first.get_json()["entry"]
    assert (ann["state"], ann["position"], ann["user_id"], ann["deal_id"]) == ("waiting", 1, "ann", deal)
    again = join(api, deal, "ann")
    assert again.status_code == 200 and again.get_json()["entry"]["id"] == ann["id"]
    bob = join(api, deal, "bob").get_json()["entry"]
    assert bob["position"] == 2
    listed = api.get(f"/v1/deals/{deal}/waitlist").get_json()["entries"]
    assert [(e["user_id"], e["position"]) for e in listed] == [("ann", 1), ("bob", 2)]
    assert services.stock.waiting(deal) == [(ann["id"], "ann"), (bob["id"], "bob")]


def test_a_released_unit_goes_to_the_first_waiting_customer_as_an_offer_they_claim(api, services, account, clock):
    deal, [held] = sold_out_deal(api, services, account)
    ann = join(api, deal, "ann").get_json()["entry"]
    bob = join(api, deal, "bob").get_json()["entry"]
    assert api.release(held).status_code == 200
    offered = entry(api, ann["id"])
    assert offered["state"] == "offered" and offered["purchase_id"]
    purchase = api.purchase(offered["purchase_id"])
    assert (purchase["fulfillment_state"], purchase["user_id"], purchase["quantity"]) == ("reserved", "ann", 1)
    assert purchase["waitlist_entry_id"] == ann["id"]
    assert to_ms(clock()) + 600_000 == services.stock.holds(deal)[offered["purchase_id"]][1]
    assert entry(api, bob["id"])["position"] == 1
    assert live(services, deal, clock) == (0, 1, 0)
    # Nobody else can buy the unit; ann claims her offer (user_id may be left out: it is hers).
    assert api.reserve(deal, 1).get_json()["error"] == "sold_out"
    assert api.put(f"/v1/purchases/{offered['purchase_id']}/claim", {"user_id": "bob"}).get_json()["error"] == (
        "user_mismatch"
    )
    assert api.put(f"/v1/purchases/{offered['purchase_id']}/claim", {}).status_code == 200
    assert entry(api, ann["id"])["state"] == "fulfilled"
    assert live(services, deal, clock) == (0, 0, 1)
    assert services.rebuilder.check(deal) == []


def test_a_released_cart_offers_its_units_to_the_waiting_customers_at_once(api, services, account, clock):
    """As a released purchase does: written down by the release, not left for the sweep."""
    one, two = api.create_deal(quantity=1)["id"], api.create_deal(quantity=1)["id"]
    body = {"items": [{"deal_id": one, "num_bought": 1}, {"deal_id": two, "num_bought": 1}]}
    cart = api.post("/v1/carts/reserve", body).get_json()["cart"]
    ann, bob = join(api, one, "ann").get_json()["entry"], join(api, two, "bob").get_json()["entry"]
    assert api.put(f"/v1/carts/{cart['id']}/release").status_code == 200
    for waiting, deal in ((ann, one), (bob, two)):
        offered = entry(api, waiting["id"])
        assert offered["state"] == "offered"
        assert api.purchase(offered["purchase_id"])["user_id"] == waiting["user_id"]
        assert live(services, deal, clock) == (0, 1, 0)
    assert services.rebuilder.check(one) == [] and services.rebuilder.check(two) == []


def test_k_returned_units_make_exactly_k_offers_and_the_rest_wait(api, services, account, clock):
    deal, holds = sold_out_deal(api, services, account, quantity=3)
    entries = [join(api, deal, f"c{i}").get_json()["entry"] for i in range(5)]
    for token in holds[:2]:
        api.release(token)
    states = [entry(api, e["id"])["state"] for e in entries]
    assert states == ["offered", "offered", "waiting", "waiting", "waiting"]
    assert [entry(api, e["id"])["position"] for e in entries[2:]] == [1, 2, 3]
    assert live(services, deal, clock) == (0, 3, 0)


def test_a_burst_of_reserves_when_units_return_never_takes_them(api, services, account, clock):
    """3 customers wait; 3 holds are released while 30 buyers reserve at the same instant: the
    3 units go to the 3 customers, every buyer is told sold out."""
    deal, holds = sold_out_deal(api, services, account, quantity=5)
    entries = [join(api, deal, f"w{i}").get_json()["entry"] for i in range(3)]
    barrier = threading.Barrier(33, timeout=60)

    def release(token):
        barrier.wait()
        services.purchases.release(account[0], token)
        return "released"

    def buyer(_):
        barrier.wait()
        try:
            services.purchases.reserve(account[0], deal, 1)
            return "held"
        except Exception as error:
            return type(error).__name__

    with ThreadPoolExecutor(33) as pool:
        futures = [pool.submit(release, token) for token in holds[:3]]
        futures += [pool.submit(buyer, n) for n in range(30)]
        outcomes = [future.result(timeout=60) for future in futures]
    assert outcomes.count("held") == 0 and outcomes.count("SoldOut") == 30
    services.waitlist.record_all()
    assert [entry(api, e["id"])["state"] for e in entries] == ["offered"] * 3
    assert live(services, deal, clock) == (0, 5, 0)
    assert services.rebuilder.check(deal) == []


def test_an_offer_left_alone_passes_to_the_next_customer(api, services, account, clock):
    deal, [held] = sold_out_deal(api, services, account)
    ann = join(api, deal, "ann").get_json()["entry"]
    bob = join(api, deal, "bob").get_json()["entry"]
    api.release(held)
    assert entry(api, ann["id"])["state"] == "offered"
    clock.advance(601)
    services.sweeper.sweep(now=clock())  # the worker's sweep returns the ended offer...
    services.waitlist.record_all()  # ...and writes down the next one
    assert entry(api, ann["id"])["state"] == "lapsed"
    bobs = entry(api, bob["id"])
    assert bobs["state"] == "offered"
    assert api.purchase(bobs["purchase_id"])["user_id"] == "bob"
    assert live(services, deal, clock) == (0, 1, 0)


def test_a_bigger_quantity_goes_to_the_waiting_customers_first(api, services, account, clock):
    deal, _ = sold_out_deal(api, services, account)
    ann = join(api, deal, "ann").get_json()["entry"]
    assert api.patch(f"/v1/deals/{deal}", {"quantity": 3}).status_code == 200
    api.deal(deal)  # the next use rebuilds the deal: its new units go to ann first
    services.waitlist.record_all()
    assert entry(api, ann["id"])["state"] == "offered"
    assert live(services, deal, clock) == (1, 2, 0)


def test_leaving_takes_the_customer_out_and_hands_an_offer_on(api, services, account, clock):
    deal, [held] = sold_out_deal(api, services, account)
    ann = join(api, deal, "ann").get_json()["entry"]
    bob = join(api, deal, "bob").get_json()["entry"]
    cy = join(api, deal, "cy").get_json()["entry"]
    left = api.request("DELETE", f"/v1/waitlist/{bob['id']}")
    assert left.status_code == 200 and left.get_json()["entry"]["state"] == "left"
    api.release(held)
    assert entry(api, ann["id"])["state"] == "offered"
    assert api.request("DELETE", f"/v1/waitlist/{ann['id']}").get_json()["entry"]["state"] == "left"
    assert entry(api, cy["id"])["state"] == "offered"  # bob left before: cy is next
    assert live(services, deal, clock) == (0, 1, 0)
    assert services.rebuilder.check(deal) == []


def test_a_flushed_redis_rebuilds_the_queue_and_the_offers(api, services, account, clock):
    deal, holds = sold_out_deal(api, services, account, quantity=2)
    ann = join(api, deal, "ann").get_json()["entry"]
    bob = join(api, deal, "bob").get_json()["entry"]
    api.release(holds[0])
    services.redis.flushdb()
    api.deal(deal)
    assert services.stock.waiting(deal) == [(bob["id"], "bob")]
    assert entry(api, ann["id"])["purchase_id"] in services.stock.holds(deal)
    api.release(holds[1])
    assert entry(api, bob["id"])["state"] == "offered"


@pytest.mark.parametrize("body", [{}, {"user_id": ""}, {"user_id": 3}, {"user_id": "a", "x": 1}])
def test_bad_joins_are_422(api, services, account, body):
    deal, _ = sold_out_deal(api, services, account)
    response = api.post(f"/v1/deals/{deal}/waitlist", body)
    assert response.status_code == 422
    assert services.stock.waiting(deal) == []


def test_another_accounts_deal_and_entries_are_not_found(api, other_api, services, account):
    deal, _ = sold_out_deal(api, services, account)
    ann = join(api, deal, "ann").get_json()["entry"]
    assert join(other_api, deal, "eve").status_code == 404
    assert other_api.get(f"/v1/deals/{deal}/waitlist").status_code == 404
    assert other_api.get(f"/v1/waitlist/{ann['id']}").status_code == 404
    assert other_api.request("DELETE", f"/v1/waitlist/{ann['id']}").status_code == 404


def test_a_keyed_join_is_replayed_byte_for_byte(api, services, account, clock):
    deal, _ = sold_out_deal(api, services, account)
    headers = {"Idempotency-Key": "join-ann"}
    first = api.post(f"/v1/deals/{deal}/waitlist", {"user_id": "ann"}, headers=headers)
    join(api, deal, "bob")
    again = api.post(f"/v1/deals/{deal}/waitlist", {"user_id": "ann"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    other = api.post(f"/v1/deals/{deal}/waitlist", {"user_id": "cy"}, headers=headers)
    assert other.status_code == 422 and other.get_json()["error"] == "idempotency_key_reused"
    assert [user for _, user in services.stock.waiting(deal)] == ["ann", "bob"]


def test_joining_while_units_are_available_offers_one_at_once(api, services, account, clock):
    deal = api.create_deal(quantity=2)["id"]
    ann = join(api, deal, "ann").get_json()["entry"]
    assert ann["state"] == "offered" and ann["position"] is None
    assert api.purchase(ann["purchase_id"])["user_id"] == "ann"
    assert live(services, deal, clock) == (1, 1, 0)


def stored_events(services, deal_id):
    from sqlalchemy import select

    from app.store.models import StoredEvent

    with services.db.read() as session:
        found = session.execute(
            select(StoredEvent.type, StoredEvent.data).where(StoredEvent.deal_id == deal_id).order_by(StoredEvent.id)
        ).all()
    return [(kind, json.loads(data)) for kind, data in found]


def test_an_offer_and_a_left_offer_are_events_committed_with_them(api, services, account, clock):
    deal, [held] = sold_out_deal(api, services, account)
    ann = join(api, deal, "ann").get_json()["entry"]
    join(api, deal, "bob")
    api.release(held)
    offered = entry(api, ann["id"])
    api.request("DELETE", f"/v1/waitlist/{ann['id']}")
    kinds = [(kind, data.get("purchase", {}).get("id")) for kind, data in stored_events(services, deal)]
    bobs = services.waitlist.list(account[0], deal)[1].purchase_id
    assert kinds[-4:] == [
        ("purchase.released", held),
        ("waitlist.offered", offered["purchase_id"]),
        ("purchase.released", offered["purchase_id"]),
        ("waitlist.offered", bobs),
    ]
    offer = stored_events(services, deal)[-1][1]
    assert offer["waitlist_entry"]["user_id"] == "bob"
    assert offer["purchase"]["fulfillment_state"] == "reserved" and offer["purchase"]["user_id"] == "bob"


def test_a_customer_id_with_separators_survives_a_rebuild(api, services, account, clock):
    deal, [held] = sold_out_deal(api, services, account)
    odd = join(api, deal, "a|b%7C|").get_json()["entry"]
    services.redis.flushdb()
    api.deal(deal)
    assert services.stock.waiting(deal) == [(odd["id"], "a|b%7C|")]
    api.release(held)
    offered = entry(api, odd["id"])
    assert offered["state"] == "offered" and api.purchase(offered["purchase_id"])["user_id"] == "a|b%7C|"
