"""Who is calling: the account's secret from `Authorization: Bearer`, `?api_secret=`, or
`api_secret` in the JSON body (the v3 clients send it in the body, even with GET)."""

from __future__ import annotations

from flask import g, request

from app.accounts.service import AccountRef
from app.web.api.parsing import json_body
from app.web.errors import ApiError
from app.web.services import services


def bearer_secret(authorization: str) -> str | None:
    """The secret of an `Authorization: Bearer <secret>` header, else None."""
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def presented_secret() -> str | None:
    secret = bearer_secret(request.headers.get("Authorization", ""))
    if secret is not None:
        return secret
    secret = request.args.get("api_secret")
    if secret:
        return secret
    body = json_body()
    if isinstance(body, dict) and isinstance(body.get("api_secret"), str):
        return body["api_secret"]
    return None


_NOT_LOOKED_UP = object()


def presented_account() -> AccountRef | None:
    """The account whose secret the request presents, if any; looked up once per request (the
    write limit asks before authentication does)."""
    account = g.get("presented_account", _NOT_LOOKED_UP)
    if account is _NOT_LOOKED_UP:
        account = g.presented_account = services().accounts.authenticate(presented_secret())
    return account


def require_account() -> None:
    """before_request hook of every API blueprint."""
    account = presented_account()
    if account is None:
        raise ApiError(401, "unauthorized", "A valid API secret is required.")
    g.account = account


def account_id() -> int:
    return g.account.id
