"""GET /storefront/:deal_id: the example storefront page and its files, all served by the app
(no build step, nothing fetched from elsewhere). The page in a browser: tests/e2e/test_storefront.py."""

from __future__ import annotations

import re

import pytest

EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]""", re.IGNORECASE)


def test_the_page_and_its_assets_are_served_by_the_app(client, api):
    deal = api.create_deal(public=True)
    page = client.get(f"/storefront/{deal['id']}")  # no secret: a shopper's browser
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'data-api="/v1/public/deals/{deal["id"]}"' in html
    assert 'id="waitlist-form"' in html and 'id="available"' in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(assets) == ["/storefront/assets/storefront.css", "/storefront/assets/storefront.js"]
    texts = {}
    for path in assets:
        with client.get(path) as asset:  # a file: closed, or its handle outlives the test
            assert asset.status_code == 200, path
            assert asset.mimetype in ("text/css", "text/javascript", "application/javascript"), path
            texts[path] = asset.get_data(as_text=True)
    for path, text in [*texts.items(), ("page", html)]:
        assert not EXTERNAL.search(text), path
    script = texts["/storefront/assets/storefront.js"]
    assert "new EventSource(" in script and "/waitlist" in script


@pytest.mark.parametrize("path", ["/storefront/0", "/storefront/abc", "/storefront/99999999999999999999"])
def test_a_page_for_no_deal_id_is_404(client, path):
    assert client.get(path).status_code == 404


def test_the_page_of_an_unknown_or_private_deal_still_loads(client, api):
    """The page is static; it shows "not available" from the API's 404 (in the browser)."""
    private = api.create_deal()
    assert client.get(f"/storefront/{private['id']}").status_code == 200
    assert client.get(f"/v1/public/deals/{private['id']}").status_code == 404
