"""The refusals every domain package may raise. Each package has its own errors beside its
services (app/inventory/errors.py, app/webhooks/service.py), all `DomainError`s; the edge turns
each into an answer in one place (app/web/errors.py)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose: a refusal with a stable code, never a bug."""


class Unavailable(DomainError):
    """A store (Redis or SQL) could not be reached, a rebuild did not finish in time, or a
    commit's outcome is unknown (the client retries, with its Idempotency-Key)."""

    def __init__(self, what: str, retry_after: int = 1) -> None:
        super().__init__(what)
        self.retry_after = retry_after


class RequestInProgress(DomainError):
    """Another request with the same Idempotency-Key (or a claim of the same purchase) is still
    running: retry in a moment."""

    def __init__(self, what: str = "a request with this Idempotency-Key is still running; retry shortly") -> None:
        super().__init__(what)
        self.retry_after = 1


class KeyReused(DomainError):
    """The Idempotency-Key was used with a different request (method, path or body)."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was used with a different request")
