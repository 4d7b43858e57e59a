"""Money: v1 speaks integer minor units (cents), the v3 ledger speaks decimal amounts."""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 currencies without a minor unit (an amount of 500 JPY is 500, not 5.00).
ZERO_DECIMAL = frozenset("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split())
THREE_DECIMAL = frozenset("BHD IQD JOD KWD LYD OMR TND".split())


def exponent(currency: str) -> int:
    code = (currency or "USD").upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def minor_to_decimal(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-exponent(currency))
