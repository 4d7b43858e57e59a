"""Which receivers a delivery may reach, and how often it is retried."""

from __future__ import annotations

from app.webhooks.dispatch import RetryPolicy


def test_an_ipv4_mapped_loopback_is_not_public():
    from app.webhooks.addresses import private_address

    assert private_address("http://[::ffff:127.0.0.1]:8080/") == "127.0.0.1 is not a public address"
    assert private_address("https://93.184.215.14/") is None  # a public address
    assert private_address("https://no-such-host.invalid/") is None  # nothing to reach (yet)


def test_backoff_is_exponential():
    assert RetryPolicy(max_retries=6, base_seconds=10).intervals() == [10, 20, 40, 80, 160, 320]
    assert RetryPolicy(max_retries=20, base_seconds=10).intervals()[-1] == 3600
