"""v1: deals and the reserve / claim / release / create purchase flow."""

from app.web.api.blueprint import ApiBlueprint
from app.web.api.v1.schemas import V1ErrorSchema
from app.web.errors import V1_BODY

blp = ApiBlueprint(
    "v1",
    __name__,
    url_prefix="/v1",
    description="Deals, purchases (reserve, claim, release, extend, direct create) and carts.",
    error_body=V1_BODY,
    error_schema=V1ErrorSchema,
    accepts_forms=True,
)

from app.web.api.v1 import carts, deals, events, purchases, waitlist, webhooks  # noqa: E402,F401  (registers the routes on blp)
