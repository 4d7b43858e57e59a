"""The fence of docs/consistency.md: a rebuild of a deal that runs between a write's script and
its commit never loses the write nor counts it twice. The write's commit holds the deal's shared
fence and checks the live state's generation; finding a rebuild happened, it takes again on the
rebuilt state."""

from __future__ import annotations

import pytest

from app.core.timeutil import to_ms
from app.store.models import utcnow


def live(services, deal_id: int):
    snap = services.stock.snapshot(deal_id, to_ms(utcnow()))
    return snap.available, snap.reserved, snap.sold


@pytest.mark.parametrize("write", ["reserve", "buy", "claim", "extend"])
def test_a_rebuild_between_the_script_and_the_commit_makes_the_write_take_again(
    shop, services, account, monkeypatch, write
):
    deal = shop.create_deal(quantity=5)["id"]
    token = services.purchases.reserve(account[0], deal, 1).token
    original = getattr(services.stock, write)
    calls = []

    def then_rebuild(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(write)
        if len(calls) == 1:
            services.rebuilder.rebuild(deal)  # SQL does not have this write yet
        return result

    monkeypatch.setattr(services.stock, write, then_rebuild)
    if write == "reserve":
        services.purchases.reserve(account[0], deal, 2)
        expected = (2, 3, 0)
    elif write == "buy":
        services.purchases.create(account[0], deal, 2, user_id="u1", credit_card_id="c", expected_price_per_unit=1999)
        expected = (2, 1, 2)
    elif write == "claim":
        assert services.purchases.claim(account[0], token, user_id="u1").fulfillment_state == "fulfilled"
        expected = (4, 0, 1)
    else:
        before = services.purchases.get(account[0], token).reserved_until
        assert services.purchases.extend(account[0], token, seconds=60).reserved_until > before
        assert services.stock.holds(deal)[token][1] == to_ms(services.purchases.get(account[0], token).reserved_until)
        expected = (4, 1, 0)
    assert calls == [write, write]  # taken once more, on the rebuilt state
    assert live(services, deal) == expected
    assert services.rebuilder.check(deal) == []
