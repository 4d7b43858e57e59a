"""v3: the purchases ledger, compatible with ConvertKit's v3 purchases API (seed 004)."""

from app.web.api.auth import require_account
from app.web.api.parsing import read_body
from app.web.api.v3.parsing import V3Blueprint

blp = V3Blueprint(
    "v3",
    __name__,
    url_prefix="/v3",
    description="The purchases ledger, compatible with ConvertKit's v3 purchases API.",
)
blp.before_request(read_body)
blp.before_request(require_account)

from app.web.api.v3 import purchases  # noqa: E402,F401  (registers the routes on blp)
