"""GET /metrics, parsed with prometheus-client's own parser."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis as redis_py
from prometheus_client.parser import text_string_to_metric_families

from app.core.events import NULL_EVENTS
from app.store.models import utcnow
from tests.support.calls import Calls


def scrape(client, headers=None) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"{key} appears twice"
            samples[key] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_and_domain_counters(client, api, account):
    deal = api.create_deal(quantity=3, price_per_unit=100)
    before = scrape(client)
    held = api.reserved(deal["id"], 2)
    assert api.claim(held["id"]).status_code == 200
    released = api.reserved(deal["id"], 1)  # leaves 0: sold out
    assert api.release(released["id"]).status_code == 200
    assert api.buy(deal["id"], 1, price=100).status_code == 200  # leaves 0 again: sold out again
    assert api.reserve(deal["id"], 1).status_code == 409
    assert api.reserve(deal["id"], 1).status_code == 409
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    reserve = {"method": "POST", "endpoint": "/v1/purchases/reserve"}
    assert delta("offer_engine_http_requests_total", **reserve, status="200") == 2
    assert delta("offer_engine_http_requests_total", **reserve, status="409") == 2
    assert delta("offer_engine_http_request_duration_seconds_count", **reserve) == 4
    assert delta("offer_engine_http_request_duration_seconds_bucket", **reserve, le="+Inf") == 4
    claim = {"method": "PUT", "endpoint": "/v1/purchases/<purchase_id>/claim"}
    assert delta("offer_engine_http_requests_total", **claim, status="200") == 1
    assert delta("offer_engine_reservations_total") == 2
    assert delta("offer_engine_claims_total") == 1
    assert delta("offer_engine_releases_total") == 1
    assert delta("offer_engine_direct_purchases_total") == 1
    assert delta("offer_engine_deals_sold_out_total") == 2
    assert delta("offer_engine_sold_out_refusals_total", endpoint="/v1/purchases/reserve") == 2
    labels = {"deal_id": str(deal["id"]), "account_id": str(account[0])}
    assert value(after, "offer_engine_deal_sold_units", **labels) == 3
    assert value(after, "offer_engine_deal_available_units", **labels) == 0
    assert value(after, "offer_engine_deal_reserved_units", **labels) == 0
    assert value(after, "offer_engine_deal_quantity_units", **labels) == 3
    assert value(after, "offer_engine_deals_loaded") >= 1
    assert value(after, "offer_engine_metrics_redis_up") == 1


def test_unmatched_paths_share_one_label(client):
    before = scrape(client)
    for i in range(3):
        client.get(f"/no/such/path/{i}")
    after = scrape(client)
    key = {"method": "GET", "endpoint": "<unmatched>", "status": "404"}
    assert (
        value(after, "offer_engine_http_requests_total", **key)
        - value(before, "offer_engine_http_requests_total", **key)
        == 3
    )


def test_per_deal_gauges_show_active_holds(client, api, account):
    deal = api.create_deal(quantity=10)
    api.reserved(deal["id"], 2)
    api.reserved(deal["id"], 3)
    samples = scrape(client)
    labels = {"deal_id": str(deal["id"]), "account_id": str(account[0])}
    assert value(samples, "offer_engine_deal_active_holds", **labels) == 2
    assert value(samples, "offer_engine_deal_reserved_units", **labels) == 5
    assert value(samples, "offer_engine_deal_available_units", **labels) == 5


def test_waitlist_gauges_and_the_offers_made_claimed_and_lapsed(client, api, services, account):
    """Waiting customers and held offers per deal, read at scrape time; offers made, claimed
    and lapsed counted in the shared figures by whichever process made them (a release in the
    web, the worker's sweep)."""
    deal = api.create_deal(quantity=2)["id"]
    held = [api.reserved(deal, 1)["id"] for _ in range(2)]
    entries = [api.post(f"/v1/deals/{deal}/waitlist", {"user_id": u}).get_json()["entry"] for u in ("ann", "bob", "cy")]
    labels = {"deal_id": str(deal), "account_id": str(account[0])}
    before = scrape(client)
    assert value(before, "offer_engine_deal_waitlist_waiting", **labels) == 3
    assert value(before, "offer_engine_deal_waitlist_offered", **labels) == 0

    def offer_of(entry):
        return api.get(f"/v1/waitlist/{entry['id']}").get_json()["entry"]["purchase_id"]

    api.release(held[0])  # -> ann's offer
    middle = scrape(client)
    assert value(middle, "offer_engine_deal_waitlist_waiting", **labels) == 2
    assert value(middle, "offer_engine_deal_waitlist_offered", **labels) == 1
    assert api.claim(offer_of(entries[0]), "ann").status_code == 200  # claimed
    api.release(held[1])  # -> bob's offer
    assert api.release(offer_of(entries[1])).status_code == 200  # bob lets his go (lapsed) -> cy's
    # cy leaves hers alone: the worker's sweep, once it ended, expires it (lapsed).
    assert len(services.sweeper.sweep(now=utcnow() + timedelta(seconds=601)).expired_records) == 1
    after = scrape(client)

    def delta(name):
        return value(after, name) - value(before, name)

    assert delta("offer_engine_waitlist_offers_made_total") == 3
    assert delta("offer_engine_waitlist_offers_claimed_total") == 1
    assert delta("offer_engine_waitlist_offers_lapsed_total") == 2
    assert delta("offer_engine_expiries_total") == 1
    assert value(after, "offer_engine_deal_waitlist_waiting", **labels) == 0
    assert value(after, "offer_engine_deal_waitlist_offered", **labels) == 0
    states = [e["state"] for e in api.get(f"/v1/deals/{deal}/waitlist").get_json()["entries"]]
    assert states == ["fulfilled", "lapsed", "lapsed"]


def test_a_customer_who_leaves_with_an_offer_is_not_a_lapse(client, api, services, account):
    deal = api.create_deal(quantity=1)["id"]
    held = api.reserved(deal, 1)["id"]
    ann = api.post(f"/v1/deals/{deal}/waitlist", {"user_id": "ann"}).get_json()["entry"]
    before = scrape(client)
    api.release(held)
    assert api.request("DELETE", f"/v1/waitlist/{ann['id']}").status_code == 200
    after = scrape(client)
    assert (
        value(after, "offer_engine_waitlist_offers_made_total")
        - value(before, "offer_engine_waitlist_offers_made_total")
        == 1
    )
    assert value(after, "offer_engine_waitlist_offers_lapsed_total") == value(
        before, "offer_engine_waitlist_offers_lapsed_total"
    )


def test_the_workers_sweep_figures_are_exported(client, api, services, account, monkeypatch):
    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    deal = api.create_deal(quantity=4)
    before = scrape(client)  # (a scrape returns ended holds too, as every read of a deal does)
    services.purchases.reserve(account[0], deal["id"], 3, now=utcnow() - timedelta(seconds=302))
    assert jobs.sweep() == {"holds": 1, "units": 3, "records": 1, "sealed": 0, "offers": 0}
    jobs.sweep()
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("offer_engine_sweep_duration_seconds_count") == 2
    assert delta("offer_engine_sweep_duration_seconds_bucket", le="+Inf") == 2
    assert delta("offer_engine_sweep_lag_seconds_count") == 2
    assert value(after, "offer_engine_sweep_lag_seconds_sum") >= 2  # that hold ended 2 s ago
    assert delta("offer_engine_sweep_holds_returned_total") == 1
    assert delta("offer_engine_sweep_units_returned_total") == 3
    assert delta("offer_engine_expiries_total") == 1
    assert abs(value(after, "offer_engine_sweep_last_finished_timestamp_seconds") - time.time()) < 60
    assert value(after, "offer_engine_sweep_last_lag_seconds") == 0  # the second sweep found nothing


def test_metrics_token(app_config):
    from app import create_app

    guarded = create_app({**app_config, "METRICS_TOKEN": "scrape-me"})
    try:
        client = guarded.test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200
    finally:
        guarded.extensions["offer_engine"].close()


def test_metrics_answer_when_redis_is_down(app_config):
    from app import create_app
    from tests.support.servers import free_port

    down = create_app({**app_config, "REDIS_CLIENT": redis_py.Redis(port=free_port(), socket_connect_timeout=0.2)})
    try:
        samples = scrape(down.test_client())
    finally:
        down.extensions["offer_engine"].close()
    assert value(samples, "offer_engine_metrics_redis_up") == 0


@pytest.mark.parametrize("webhook", [False, True], ids=["no-webhooks", "webhook-for-another-event"])
def test_events_and_metrics_add_no_round_trip_to_reserve_and_claim(api, services, monkeypatch, webhook):
    """Counting events is in-memory work: the same statements and round trips with the sink as
    without it, with a webhook or none (the worker's relay reads the subscriptions)."""
    if webhook:
        api.post("/v1/webhooks", {"url": "https://example.test/hook", "events": ["purchase.expired"]})
    deal = api.create_deal(quantity=100)
    api.claim(api.reserved(deal["id"], 1)["id"])  # loads the deal and the caches
    calls = Calls(services, monkeypatch)
    try:

        def reserve_and_claim():
            held = api.reserved(deal["id"], 1)
            reserved = calls.reset()
            assert api.claim(held["id"]).status_code == 200
            return reserved, calls.reset()

        with_sink = reserve_and_claim()
        monkeypatch.setattr(services.purchases, "events", NULL_EVENTS)
        without = reserve_and_claim()
    finally:
        calls.close()
    assert with_sink == without


def test_the_grafana_dashboard_queries_metrics_we_export(client, services, monkeypatch):
    import json
    import re

    from app.devtools.embedded import ROOT
    from workers import jobs

    monkeypatch.setattr(jobs, "SERVICES", services)
    jobs.sweep()  # the last-sweep gauges exist once a sweep ran

    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queried = {name for expr in exprs for name in re.findall(r"offer_engine_[a-z_]+", expr)}
    response = client.get("/metrics")
    families = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    for name in queried:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in families, name
