"""Baseline (b): the design users would write without Redis.

Flask + SQLAlchemy ORM on the same PostgreSQL: `SELECT ... FOR UPDATE` on the deal row, check
the stock, decrement it, insert the reservation, commit. A claim is what a team would write
next to it: `SELECT ... FOR UPDATE` on the reservation, mark it claimed, insert one coupon row
per unit, commit (the deal row is not touched again: its `reserved` counts the units taken by
reservations, claimed or not, and what is sold is counted from the reservations). Claiming a
claimed reservation again answers it as it is (with its coupons). Same request and response
shapes as the app's reserve and claim (the same wrk scripts drive both, and the X-Request-ID a
request brings is echoed as the app does, so the scripts time reserves and claims apart), the
same in-process check of the API secret (a SHA-256 compared with a known hash, like the app's
cached lookup).

    gunicorn --config python:config.gunicorn 'bench.baselines.rowlock:create_app()'
    env: DATABASE_URL, ROWLOCK_SECRET_SHA256, DB_POOL_SIZE, DB_MAX_OVERFLOW
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime, timedelta

from flask import Flask, jsonify, request
from sqlalchemy import BigInteger, DateTime, ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

TTL = timedelta(seconds=300)


class Base(DeclarativeBase):
    pass


class Deal(Base):
    __tablename__ = "rowlock_deals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger)
    available: Mapped[int] = mapped_column(BigInteger)
    #: Units taken by reservations, held or claimed (available + reserved == quantity).
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class Reservation(Base):
    __tablename__ = "rowlock_reservations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(40), unique=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("rowlock_deals.id"), index=True)
    units: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10))
    user_id: Mapped[str | None] = mapped_column(String(200))
    reserved_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Coupon(Base):
    __tablename__ = "rowlock_coupons"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reservation_id: Mapped[int] = mapped_column(ForeignKey("rowlock_reservations.id"), index=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)


def engine_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def create_schema(url: str) -> None:
    engine = create_engine(engine_url(url))
    Base.metadata.create_all(engine)
    engine.dispose()


def _purchase(reservation: Reservation, coupons: list[str] | None = None) -> dict:
    return {
        "id": reservation.token,
        "deal_id": reservation.deal_id,
        "quantity": reservation.units,
        "fulfillment_state": reservation.state,
        "user_id": reservation.user_id,
        "reserved_until": reservation.reserved_until.isoformat(),
        "coupons": coupons or [],
    }


def _error(status: int, code: str, message: str):
    response = jsonify(status="error", error=code, message=message)
    response.status_code = status
    return response


def create_app() -> Flask:
    app = Flask(__name__)
    engine = create_engine(
        engine_url(os.environ["DATABASE_URL"]),
        pool_size=int(os.environ.get("DB_POOL_SIZE") or 10),
        max_overflow=int(os.environ.get("DB_MAX_OVERFLOW") or 10),
        pool_pre_ping=True,
    )
    sessions = sessionmaker(engine, expire_on_commit=False)
    secret_hash = os.environ.get("ROWLOCK_SECRET_SHA256", "")

    @app.before_request
    def authenticate():
        if request.path == "/healthz":
            return None
        header = request.headers.get("Authorization", "")
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        if not hmac.compare_digest(digest, secret_hash):
            return _error(401, "unauthorized", "A valid API secret is required.")
        return None

    @app.after_request
    def echo_request_id(response):
        request_id = request.headers.get("X-Request-ID")
        if request_id:
            response.headers["X-Request-ID"] = request_id
        return response

    @app.post("/v1/purchases/reserve")
    def reserve():
        body = request.get_json(silent=True) or {}
        deal_id, units = body.get("deal_id"), body.get("num_bought")
        if not isinstance(deal_id, int) or not isinstance(units, int) or units < 1:
            return _error(422, "validation_failed", "deal_id and num_bought must be positive integers.")
        now = datetime.now(UTC)
        with sessions.begin() as session:
            deal = session.get(Deal, deal_id, with_for_update=True)
            if deal is None:
                return _error(404, "not_found", "No such deal.")
            if deal.available < units:
                return _error(409, "sold_out", f"Only {deal.available} left.")
            deal.available -= units
            deal.reserved += units
            reservation = Reservation(
                token=secrets.token_urlsafe(18),
                deal_id=deal_id,
                units=units,
                state="reserved",
                reserved_until=now + TTL,
                created_at=now,
            )
            session.add(reservation)
        return jsonify(status="success", purchase=_purchase(reservation))

    @app.put("/v1/purchases/<token>/claim")
    def claim(token: str):
        body = request.get_json(silent=True) or {}
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            return _error(422, "validation_failed", "user_id is required.")
        with sessions.begin() as session:
            reservation = session.scalar(select(Reservation).where(Reservation.token == token).with_for_update())
            if reservation is None:
                return _error(404, "not_found", "No such purchase.")
            if reservation.state == "fulfilled":
                if reservation.user_id != user_id:
                    return _error(409, "already_claimed", "This purchase was claimed by someone else.")
                codes = list(session.scalars(select(Coupon.code).where(Coupon.reservation_id == reservation.id)))
            elif reservation.state == "reserved":
                reservation.state = "fulfilled"
                reservation.user_id = user_id
                reservation.claimed_at = datetime.now(UTC)
                codes = [secrets.token_urlsafe(12) for _ in range(reservation.units)]
                session.add_all(Coupon(reservation_id=reservation.id, code=code) for code in codes)
            else:
                return _error(409, "not_claimable", f"This purchase is {reservation.state}.")
        return jsonify(status="success", purchase=_purchase(reservation, codes))

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app
