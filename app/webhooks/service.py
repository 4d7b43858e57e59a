"""Registering webhooks, and what a delivery needs of them (the relay reads subscriptions from
SQL itself: app/store/outbox.py `subscriptions`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import Connection, func, select, update

from app.core.errors import DomainError
from app.core.events import WEBHOOK_EVENTS
from app.store.db import Database
from app.store.models import Webhook, utcnow
from app.webhooks import signing
from app.webhooks.addresses import private_address

#: An account may register this many URLs.
MAX_PER_ACCOUNT = 20
MAX_URL_LENGTH = 2000


class WebhookError(DomainError):
    """Base of the webhook errors; the HTTP layer maps each to a status (app/web/errors.py)."""


class WebhookNotFound(WebhookError):
    pass


class TooManyWebhooks(WebhookError):
    def __init__(self) -> None:
        super().__init__(f"an account can register at most {MAX_PER_ACCOUNT} webhooks")


class InvalidWebhook(WebhookError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.problem = message


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host; anything else is refused at registration."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidWebhook("url", f"Must be an http or https URL of at most {MAX_URL_LENGTH} characters.")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidWebhook("url", "Must not contain spaces or control characters.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhook("url", "Must be an http or https URL with a host.")
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise InvalidWebhook("url", "Has an invalid port.") from None
    return url


def check_events(events: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(events))
    unknown = [name for name in chosen if name not in WEBHOOK_EVENTS]
    if unknown or not chosen:
        raise InvalidWebhook("events", f"Must be a non-empty list of: {', '.join(WEBHOOK_EVENTS)}.")
    return chosen


class WebhookService:
    def __init__(self, db: Database, *, allow_private: bool = False) -> None:
        self.db = db
        #: Whether receivers on loopback / private / link-local addresses are allowed
        #: (WEBHOOK_ALLOW_PRIVATE_URLS; see addresses.py).
        self.allow_private = allow_private

    def register(self, account_id: int, url: str, events: Sequence[str]) -> tuple[Webhook, str]:
        """Returns the webhook and its signing secret (shown to the caller only now)."""
        url = check_url(url)
        problem = None if self.allow_private else private_address(url)
        if problem:
            raise InvalidWebhook("url", f"Must be a public receiver ({problem}).")
        chosen = check_events(events)
        secret = signing.new_secret()
        with self.db.transaction() as session:
            count = session.scalar(select(func.count()).where(Webhook.account_id == account_id))
            if count >= MAX_PER_ACCOUNT:
                raise TooManyWebhooks()
            webhook = Webhook(
                account_id=account_id, url=url, events=",".join(chosen), secret=secret, consecutive_failures=0
            )
            session.add(webhook)
            session.flush()
        return webhook, secret

    def list(self, account_id: int) -> list[Webhook]:
        with self.db.read() as session:
            return list(session.scalars(select(Webhook).where(Webhook.account_id == account_id).order_by(Webhook.id)))

    def get(self, account_id: int, webhook_id: int) -> Webhook:
        with self.db.read() as session:
            webhook = session.get(Webhook, webhook_id)
        if webhook is None or webhook.account_id != account_id:
            raise WebhookNotFound()
        return webhook

    def delete(self, account_id: int, webhook_id: int) -> None:
        with self.db.transaction() as session:
            webhook = session.get(Webhook, webhook_id)
            if webhook is None or webhook.account_id != account_id:
                raise WebhookNotFound()
            session.delete(webhook)  # its deliveries with it (ON DELETE CASCADE)

    # -- for deliveries ---------------------------------------------------------------------------

    def record_attempt(
        self,
        webhook_id: int,
        *,
        event: str,
        delivery_id: str,
        status: int | None,
        error: str | None,
        delivered: bool,
        at: datetime | None = None,
        connection: Connection | None = None,
    ) -> None:
        """The last attempt's outcome on the webhook row (in `connection`'s transaction when
        given)."""
        at = at or utcnow()
        values: dict = {
            "last_event": event,
            "last_delivery_id": delivery_id,
            "last_attempt_at": at,
            "last_status": status,
            "last_error": None if error is None else error[:500],
        }
        if delivered:
            values["last_success_at"] = at
            values["consecutive_failures"] = 0
        else:
            values["consecutive_failures"] = Webhook.consecutive_failures + 1
        statement = update(Webhook).where(Webhook.id == webhook_id).values(**values)
        if connection is not None:
            connection.execute(statement)
            return
        with self.db.begin() as connection:
            connection.execute(statement)
