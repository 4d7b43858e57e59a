"""v1: deals and the reserve / claim / release / create purchase flow."""

from app.web.api.auth import require_account
from app.web.api.parsing import Blueprint, read_body

blp = Blueprint(
    "v1",
    __name__,
    url_prefix="/v1",
    description="Deals and purchases: reserve, claim, release, extend, direct create.",
)
blp.before_request(read_body)
blp.before_request(require_account)

from app.web.api.v1 import deals, purchases, webhooks  # noqa: E402,F401  (registers the routes on blp)
