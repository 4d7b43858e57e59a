"""Deals: what there is to sell, with live numbers from Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.core.errors import RequestInProgress, Unavailable
from app.core.idempotency import KeptAnswers, Keyed
from app.core.timeutil import to_ms
from app.store import reports
from app.store.db import Database
from app.store.models import Deal

from .errors import BadWindow, DealNotFound, NotLoaded, QuantityBelowCommitted, SkuTaken
from .rebuild import Rebuilder, sql_state
from .stock import LiveStock, Snapshot


@dataclass(frozen=True)
class DealView:
    """A deal with its live `available / reserved / sold` (they always add up to quantity)."""

    deal: Deal
    live: Snapshot

    def __getattr__(self, name: str):
        return getattr(self.deal, name)

    @property
    def quantity(self) -> int:
        return self.live.quantity

    @property
    def available(self) -> int:
        return max(self.live.available, 0)

    @property
    def reserved(self) -> int:
        return self.live.reserved

    @property
    def sold(self) -> int:
        return self.live.sold

    @property
    def active_holds(self) -> int:
        return self.live.holds

    def on_sale_at(self, now: datetime) -> bool:
        """Inside the sale window at `now` (whether or not units are left)."""
        starts, ends = self.deal.starts_at, self.deal.ends_at
        return (starts is None or starts <= now) and (ends is None or now < ends)


def _untouched(deal: Deal) -> Snapshot:
    """A new deal's live numbers: all of it available."""
    return Snapshot(deal.id, deal.quantity, deal.quantity, 0, 0, 0, deal.account_id, "")


def _snapshot(state) -> Snapshot:
    """The live numbers SQL defines (what a rebuild loads)."""
    return Snapshot(
        state.deal_id,
        state.quantity,
        state.available,
        state.reserved,
        state.sold,
        len(state.holds),
        state.account_id,
        "",
    )


class _Unset:
    """A PATCH that leaves a field as it is (None clears it)."""


UNSET = _Unset()


def _check_window(starts_at: datetime | None, ends_at: datetime | None) -> None:
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise BadWindow()


class DealService:
    def __init__(self, db: Database, stock: LiveStock, rebuilder: Rebuilder, kept: KeptAnswers | None = None) -> None:
        self.db = db
        self.stock = stock
        self.rebuilder = rebuilder
        #: Where a keyed write keeps its answer (in its own transaction).
        self.kept = kept
        #: Now, as the rest of the inventory reads it (a test's clock, or the wall clock).
        self.clock = rebuilder.clock

    def create(
        self,
        account_id: int,
        *,
        title: str,
        price_per_unit: int,
        quantity: int,
        currency: str = "USD",
        sku: str | None = None,
        max_per_purchase: int | None = None,
        max_per_user: int | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
        public: bool = False,
        keyed: Keyed | None = None,
    ) -> DealView:
        _check_window(starts_at, ends_at)
        return self._exactly_once(
            keyed,
            lambda: self._create(
                account_id,
                keyed,
                Deal(
                    account_id=account_id,
                    title=title,
                    price_per_unit=price_per_unit,
                    quantity=quantity,
                    currency=currency.upper(),
                    sku=sku,
                    max_per_purchase=max_per_purchase,
                    max_per_user=max_per_user,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    public=public,
                ),
            ),
        )

    def _create(self, account_id: int, keyed: Keyed | None, deal: Deal) -> DealView:
        try:
            with self.db.transaction() as session:
                session.add(deal)
                session.flush()
                self._keep(session, keyed, DealView(deal, _untouched(deal)))
        except IntegrityError:
            raise SkuTaken(deal.sku or "") from None
        return self._view(deal)

    def get(self, account_id: int, deal_id: int) -> DealView:
        with self.db.read() as session:
            deal = session.get(Deal, deal_id)
        if deal is None or deal.account_id != account_id:
            raise DealNotFound()
        return self._view(deal)

    def list(self, account_id: int, *, page: int = 1, per_page: int = 50) -> tuple[list[DealView], int]:
        with self.db.read() as session:
            total = session.scalar(select(func.count()).where(Deal.account_id == account_id))
            deals: Sequence[Deal] = session.scalars(
                select(Deal)
                .where(Deal.account_id == account_id)
                .order_by(Deal.id)
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
        live = self.stock.snapshots([deal.id for deal in deals], to_ms(self.clock()))
        views = []
        for deal in deals:
            snapshot = live[deal.id]
            views.append(DealView(deal, snapshot) if snapshot else self._view(deal))
        return views, int(total)

    def ids(self) -> list[int]:
        """Every deal's id (the CLI's rebuild and check go through them all)."""
        with self.db.read() as session:
            return reports.deal_ids(session)

    def update(
        self,
        account_id: int,
        deal_id: int,
        *,
        title: str | None = None,
        price_per_unit: int | None = None,
        quantity: int | None = None,
        max_per_purchase: int | None | _Unset = UNSET,
        max_per_user: int | None | _Unset = UNSET,
        starts_at: datetime | None | _Unset = UNSET,
        ends_at: datetime | None | _Unset = UNSET,
        public: bool | None = None,
        keyed: Keyed | None = None,
        now: datetime | None = None,
    ) -> DealView:
        """Change a deal. A new quantity may not go below what is reserved or sold.

        Runs under the deal's exclusive fence, so no write is between its Redis script and its
        commit while we read what is committed. Stock and price live in Redis too: the deal's
        live state is dropped before the commit and rebuilt from SQL on next use.
        """
        changes = dict(
            title=title,
            price_per_unit=price_per_unit,
            quantity=quantity,
            max_per_purchase=max_per_purchase,
            max_per_user=max_per_user,
        )
        window = dict(starts_at=starts_at, ends_at=ends_at, public=public)
        return self._exactly_once(keyed, lambda: self._update(account_id, deal_id, keyed, now, **changes, **window))

    def _update(
        self,
        account_id: int,
        deal_id: int,
        keyed: Keyed | None,
        now: datetime | None,
        *,
        title,
        price_per_unit,
        quantity,
        max_per_purchase,
        max_per_user,
        starts_at,
        ends_at,
        public,
    ) -> DealView:
        with self.db.transaction() as session:
            self.rebuilder.lock(session, deal_id)
            deal = session.get(Deal, deal_id)
            if deal is None or deal.account_id != account_id:
                raise DealNotFound()
            if quantity is not None and quantity != deal.quantity:
                state = sql_state(session, deal, now or self.clock())
                if quantity < state.sold + state.reserved:
                    raise QuantityBelowCommitted(state.reserved, state.sold)
            window = (
                deal.starts_at if starts_at is UNSET else starts_at,
                deal.ends_at if ends_at is UNSET else ends_at,
            )
            _check_window(*window)
            # Quantity, price, title (for purchase lines) and the window are all in the live state.
            live_changed = (
                (quantity is not None and quantity != deal.quantity)
                or (price_per_unit is not None and price_per_unit != deal.price_per_unit)
                or (title is not None and title != deal.title)
                or window != (deal.starts_at, deal.ends_at)
            )
            caps = (
                deal.max_per_purchase if max_per_purchase is UNSET else max_per_purchase,
                deal.max_per_user if max_per_user is UNSET else max_per_user,
            )
            live_changed = live_changed or caps != (deal.max_per_purchase, deal.max_per_user)
            deal.max_per_purchase, deal.max_per_user = caps
            deal.starts_at, deal.ends_at = window
            if public is not None:
                deal.public = public
            if title is not None:
                deal.title = title
            if price_per_unit is not None:
                deal.price_per_unit = price_per_unit
            if quantity is not None:
                deal.quantity = quantity
            session.flush()
            if keyed is not None:
                self._keep(session, keyed, DealView(deal, _snapshot(sql_state(session, deal, now or self.clock()))))
            if live_changed:
                self.stock.invalidate(deal_id)
        return self._view(deal, now)

    def _keep(self, session, keyed: Keyed | None, view: DealView) -> None:
        """Keep a keyed write's answer in its transaction; a key another request holds makes the
        transaction roll back (and its answer replayed)."""
        if keyed is not None and self.kept.keep(session.connection(), [(keyed, view)]):
            raise RequestInProgress()

    def _exactly_once(self, keyed: Keyed | None, write):
        if keyed is None:
            return write()
        return self.kept.exactly_once(keyed, write)

    def _view(self, deal: Deal, now: datetime | None = None) -> DealView:
        for _ in range(3):
            try:
                return DealView(deal, self.stock.snapshot(deal.id, to_ms(now or self.clock())))
            except NotLoaded:
                self.rebuilder.rebuild(deal.id, force=False)
        raise Unavailable("the deal's live state could not be loaded; retry")

    # -- storefronts (app/inventory/storefront.py) -----------------------------------------

    def public_view(self, deal_id: int, now: datetime | None = None) -> DealView:
        """A deal a storefront may read without the account's secret: a public one only; any
        other, like an unknown id, is DealNotFound."""
        with self.db.read() as session:
            deal = session.get(Deal, deal_id)
        if deal is None or not deal.public:
            raise DealNotFound()
        return self._view(deal, now)

    def public_rows(self, deal_ids: Sequence[int]) -> dict[int, Deal]:
        """The rows of those of `deal_ids` that are public, in one query (the storefront feed
        re-reads what it shows besides the live numbers)."""
        if not deal_ids:
            return {}
        with self.db.read() as session:
            rows = session.scalars(select(Deal).where(Deal.id.in_(list(deal_ids)), Deal.public.is_(True))).all()
        return {deal.id: deal for deal in rows}
