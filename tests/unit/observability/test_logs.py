"""Log lines: request ids and secrets."""

from __future__ import annotations

import re

import pytest

from app.observability.logs import accept_request_id, redact


@pytest.mark.parametrize("presented", ["", "has space", "x" * 129, 'quote"d', "new\nline", "é"])
def test_an_insane_request_id_is_replaced(presented):
    assert re.fullmatch(r"[0-9a-f]{32}", accept_request_id(presented))


def test_redaction():
    assert redact("GET /x?api_secret=oe_abcdefghijkl&page=2") == "GET /x?api_secret=[redacted]&page=2"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact('{"api_secret": "s3cret"}') == '{"api_secret": "[redacted]"}'
    assert redact("signing with whsec_abcdefghijkl") == "signing with whsec_[redacted]"
    assert redact("nothing to hide") == "nothing to hide"
