"""GET /storefront/:deal_id: an example storefront page for a public deal, served by the app.

Plain HTML and a little JavaScript (static/storefront.js), no build step, every asset served from
here. The page reads only the public API, as a shop's own page on another origin would: it
fetches GET /v1/public/deals/:id, then follows GET /v1/public/deals/:id/stream with an
`EventSource` (the browser reconnects by itself after the server's `retry:`; when the server
refuses, the page itself tries again), and shows the title, the price, "only N left", a countdown
to the sale window's start or end, "sold out", and a form that joins the deal's waitlist
(POST /v1/public/deals/:id/waitlist, whose answer or error it shows). docs/storefront.md.
"""

from __future__ import annotations

from flask import Blueprint, Flask, render_template

from app.web.api.public import PREFIX

bp = Blueprint(
    "storefront",
    __name__,
    url_prefix="/storefront",
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)


@bp.get("/<int:deal_id>")
def page(deal_id: int):
    return render_template("storefront/page.html", deal_id=deal_id, api=f"{PREFIX}/deals/{deal_id}")


def init_app(app: Flask) -> None:
    """After the APIs: `<int:...>` is then their converter (ids from 1, at most 64 bits)."""
    app.register_blueprint(bp)
