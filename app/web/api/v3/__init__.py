"""v3: the purchases ledger, compatible with ConvertKit's v3 purchases API (seed 004)."""

from app.web.api.v3.parsing import V3Blueprint
from app.web.api.v3.schemas import V3ErrorSchema
from app.web.errors import V3_BODY

blp = V3Blueprint(
    "v3",
    __name__,
    url_prefix="/v3",
    description="The purchases ledger, compatible with ConvertKit's v3 purchases API.",
    error_body=V3_BODY,
    error_schema=V3ErrorSchema,
)

from app.web.api.v3 import purchases  # noqa: E402,F401  (registers the routes on blp)
