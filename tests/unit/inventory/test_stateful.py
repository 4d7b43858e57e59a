"""A Hypothesis state machine drives reserve / claim / release / create / expire / sweep /
quantity changes / Redis loss through the real services (real Redis, real SQL) against a plain
model, and checks after every step that Redis and SQL both say what the model says:
sold + active holds <= quantity (no oversell) and available == quantity - sold - holds (no leak).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from app.core.timeutil import from_ms, to_ms
from app.inventory.errors import AlreadyClaimed, QuantityBelowCommitted, SoldOut
from app.inventory.rebuild import sql_state
from app.store.models import Deal, utcnow
from tests.support.clock import ControlledClock

TTL = 300


@dataclass
class Held:
    units: int
    ends: int  # ms
    state: str = "reserved"  # reserved | fulfilled | released
    user: str | None = None


def machine_for(services, account_id, clock: ControlledClock):
    class Inventory(RuleBasedStateMachine):
        purchases = Bundle("purchases")

        def __init__(self):
            super().__init__()
            clock.ms = to_ms(utcnow())
            self.quantity = 10
            self.deal_id = services.deals.create(account_id, title="M", price_per_unit=100, quantity=10).deal.id
            self.held: dict[str, Held] = {}
            self.sold = 0

        # -- the model ----------------------------------------------------------------------

        @property
        def clock(self) -> int:
            return clock.ms

        def now(self):
            return from_ms(self.clock)

        def active(self) -> int:
            return sum(h.units for h in self.held.values() if h.state == "reserved" and h.ends > self.clock)

        def available(self) -> int:
            return self.quantity - self.sold - self.active()

        # -- rules --------------------------------------------------------------------------

        @rule(target=purchases, units=st.integers(1, 4))
        def reserve(self, units):
            try:
                purchase = services.purchases.reserve(account_id, self.deal_id, units, now=self.now())
            except SoldOut:
                assert self.available() < units
                return "none"
            assert self.available() >= units
            self.held[purchase.token] = Held(units, self.clock + TTL * 1000)
            return purchase.token

        @rule(units=st.integers(1, 3), user=st.sampled_from(["ann", "bob"]))
        def buy(self, units, user):
            try:
                services.purchases.create(
                    account_id,
                    self.deal_id,
                    units,
                    user_id=user,
                    credit_card_id="c",
                    expected_price_per_unit=100,
                    now=self.now(),
                )
            except SoldOut:
                assert self.available() < units
                return
            assert self.available() >= units
            self.sold += units

        @rule(token=purchases, user=st.sampled_from(["ann", "bob"]))
        def claim(self, token, user):
            if token == "none":
                return
            held = self.held[token]
            hold_is_live = held.state == "reserved" and held.ends > self.clock
            try:
                services.purchases.claim(account_id, token, user_id=user, now=self.now())
            except AlreadyClaimed:
                assert held.state == "fulfilled" and held.user != user
                return
            except SoldOut:
                assert held.state != "fulfilled" and not hold_is_live and self.available() < held.units
                return
            if held.state == "fulfilled":
                assert held.user == user
                return
            assert hold_is_live or self.available() >= held.units
            held.state, held.user = "fulfilled", user
            self.sold += held.units

        @rule(token=consumes(purchases))
        def release(self, token):
            if token == "none":
                return
            held = self.held[token]
            try:
                services.purchases.release(account_id, token, now=self.now())
            except AlreadyClaimed:
                assert held.state == "fulfilled"
                return
            assert held.state != "fulfilled"
            held.state = "released"

        @rule(seconds=st.sampled_from([1, 60, 299, 300, 301, 600]))
        def advance(self, seconds):
            clock.advance(seconds)

        @rule()
        def sweep(self):
            services.sweeper.sweep(now=self.now())

        @rule(quantity=st.integers(0, 20))
        def change_quantity(self, quantity):
            try:
                services.deals.update(account_id, self.deal_id, quantity=quantity, now=self.now())
            except QuantityBelowCommitted:
                assert quantity < self.sold + self.active()
                return
            assert quantity >= self.sold + self.active()
            self.quantity = quantity

        @rule()
        def lose_redis(self):
            services.redis.flushdb()

        # -- what must always hold ----------------------------------------------------------

        @invariant()
        def redis_and_sql_agree_with_the_model(self):
            if services.redis.dbsize() == 0:
                services.rebuilder.ensure_loaded(self.deal_id)
            live = services.stock.snapshot(self.deal_id, self.clock)
            assert (live.quantity, live.sold, live.reserved) == (self.quantity, self.sold, self.active())
            assert live.available == self.available() >= 0
            assert live.sold + live.reserved <= live.quantity
            with services.db.read() as session:
                truth = sql_state(session, session.get(Deal, self.deal_id), self.now())
            assert (truth.quantity, truth.sold, truth.reserved) == (self.quantity, self.sold, self.active())
            live_holds = {t: h.units for t, h in self.held.items() if h.state == "reserved" and h.ends > self.clock}
            assert {hold[0]: hold[1] for hold in truth.holds} == live_holds

    return Inventory


def test_services_match_a_simple_model_step_by_step(services, account, clock):
    run_state_machine_as_test(
        machine_for(services, account[0], clock),
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )


def test_hold_expiry_is_seen_the_same_in_both_stores(services, account):
    """A direct check of the boundary the model relies on: at its end instant a hold is over."""
    deal = services.deals.create(account[0], title="B", price_per_unit=1, quantity=1).deal.id
    start = utcnow()
    services.purchases.reserve(account[0], deal, 1, now=start)
    end = start + timedelta(seconds=TTL)
    assert services.stock.snapshot(deal, to_ms(end) - 1).reserved == 1
    assert services.stock.snapshot(deal, to_ms(end)).reserved == 0
