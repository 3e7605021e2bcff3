"""Money is integer pico-dollars (1 USD = 10**12 picos). Prices are Decimal USD per 1M tokens.

Why picos: a price of p USD per 1M tokens is p x 10**6 picos per token, a whole number for any price with up
to 6 decimals per 1M tokens (the catalog checks it, batch discount and cache prices included). So every
attempt's cost, `tokens x picos-per-token`, is an exact integer: no rounding anywhere in the ledger, and a
job total is the exact sum of its attempts (the provider's invoice, computed on the same prices, matches).
BigInteger columns hold up to 9.2 x 10**18 picos = $9.2 million per job or day, on SQLite and Postgres alike
(SQLite's NUMERIC is not exact; integers are). Rounding happens only when money is shown.

JSON money is a Decimal (see usd_json) that `json_default` writes as a plain JSON number with every digit
and no exponent: 4e-06 is written 0.000004.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import orjson

PICOS_PER_USD = 10**12
_USD_EXP = Decimal(1).scaleb(-12)  # one pico-dollar
_MIN_SHOWN = Decimal("0.000001")  # JSON money shows at least 6 decimals (4e-06 -> 0.000004)


def to_decimal(value: object) -> Decimal:
    """Parse a price or amount without going through binary floating point."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def usd_to_picos(usd: object) -> int:
    """A user-supplied dollar amount (a budget) to pico-dollars (exact for up to 12 decimals; finer is
    rounded half-even)."""
    return int((to_decimal(usd) * PICOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def picos_to_usd(picos: int) -> Decimal:
    """Exact: every pico-dollar is a 12th decimal of a dollar."""
    return (Decimal(picos) * _USD_EXP).quantize(_USD_EXP)


def usd_json(picos: int | None) -> Decimal | None:
    """Pico-dollars for JSON: an exact Decimal with its significant digits, at least 6 decimals
    (0.000004, 0.0007359, 1.500000). Write it with `json_default` (orjson) or `dumps_json`."""
    if picos is None:
        return None
    d = picos_to_usd(picos).normalize()
    if d.as_tuple().exponent > -6:  # type: ignore[operator]
        d = d.quantize(_MIN_SHOWN)
    return d


def json_default(o: Any) -> Any:
    """orjson `default=`: Decimals become plain JSON numbers, digit for digit (never 4e-06, never a float
    round trip); anything else unknown becomes its str()."""
    if isinstance(o, Decimal):
        return orjson.Fragment(format(o, "f").encode())
    return str(o)


def dumps_json(obj: Any, *, option: int = 0) -> bytes:
    return orjson.dumps(obj, option=option, default=json_default)


def exact_usd(picos: int) -> str:
    """Every digit, for messages about one amount: 12 * 10**6 -> '$0.000012', 5 * 10**11 -> '$0.5'."""
    return f"${format(picos_to_usd(picos).normalize(), 'f')}"


def fmt_usd(picos: int | None) -> str:
    """For tables: 6 decimals below a dollar, 4 above (rounded half-even, only here)."""
    if picos is None:
        return "-"
    d = picos_to_usd(picos)
    return f"${d:,.6f}" if abs(d) < 1 else f"${d:,.4f}"
