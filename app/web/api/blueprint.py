"""What every API blueprint is: its body read and checked first, then its caller authenticated
(unless the blueprint is public); its own error body (app/web/errors.py) and the schema that
documents it; its parser.

An API is one `ApiBlueprint` (app/web/api/v1, app/web/api/v3): the blueprint, not the URL,
decides how the API's errors look and which bodies it reads.
"""

from __future__ import annotations

from flask_smorest import Blueprint as SmorestBlueprint

from app.web.api.auth import require_account
from app.web.api.idempotency import idempotent
from app.web.api.parsing import Parser, read_body
from app.web.errors import V1_BODY, ErrorBody


class ApiBlueprint(SmorestBlueprint):
    ARGUMENTS_PARSER = Parser()

    def __init__(
        self,
        *args,
        error_body: ErrorBody = V1_BODY,
        error_schema: type | None = None,
        accepts_forms: bool = False,
        requires_account: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        #: How this API writes its errors, and the schema that documents them.
        self.error_body = error_body
        self.error_schema = error_schema
        #: Whether writes may send a form (`application/x-www-form-urlencoded`) instead of JSON.
        self.accepts_forms = accepts_forms
        #: False for what anyone may read without a secret (the storefronts' API, api/public).
        self.requires_account = requires_account
        self.before_request(self.read_body)
        if requires_account:
            self.before_request(require_account)

    def read_body(self) -> None:
        """before_request: the body, read once, before anything else looks at it
        (authentication may read the secret from it)."""
        read_body(self.accepts_forms, self.error_body)

    def arguments(self, schema, *args, **kwargs):
        # One schema object per view, not one per request: building a marshmallow schema
        # deep-copies its fields, which is a measurable part of an answer. Loading is stateless.
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, *args, **kwargs)

    def alt_response(self, *args, **kwargs):
        """Document an error response without wrapping the view: flask-smorest's version adds
        a call layer (with a coroutine check) per documented status to every request."""
        document = super().alt_response(*args, **kwargs)

        def decorator(func):
            func._apidoc = document(func)._apidoc
            return func

        return decorator

    def documented(self, *codes: tuple[int, str]):
        """Decorate a view with the error responses it can give, in this API's error body."""

        def decorator(view):
            for status, description in codes:
                view = self.alt_response(status, schema=self.error_schema, description=description)(view)
            return view

        return decorator

    def found(self, envelope):
        """Decorate a view that answers with one of the account's things, found by the id in
        its URL: `envelope` on 200, not_found (404) when there is none."""

        def decorator(view):
            return self.response(200, envelope)(self.documented((404, "not_found"))(view))

        return decorator

    def write(self, arguments, envelope, body, *codes: tuple[int, str], status: int = 200):
        """Decorate a write view: its `arguments` schema, its answer (`status` with `envelope`),
        the error responses it can give, and Idempotency-Key, whose retries get `body(result)`."""

        def decorator(view):
            view = self.documented(*codes)(idempotent(body, status=status)(view))
            return self.arguments(arguments)(self.response(status, envelope)(view))

        return decorator
