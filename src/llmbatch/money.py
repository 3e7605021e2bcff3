"""Money is integer micro-dollars (1 USD = 1_000_000). Prices are Decimal USD per 1M tokens.

A neat identity keeps the arithmetic exact: tokens x (USD per 1M tokens) = micro-dollars.
Each attempt's cost is computed in Decimal and rounded *up* once to whole micro-dollars, so the
ledger never under-states spend; every total is a sum of those integers.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

MICROS_PER_USD = 1_000_000


def to_decimal(value: object) -> Decimal:
    """Parse a price or amount without going through binary floating point."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def ceil_micros(amount_micros: Decimal) -> int:
    return int(amount_micros.to_integral_value(rounding=ROUND_CEILING))


def usd_to_micros(usd: object) -> int:
    """A user-supplied dollar amount (a budget) to micro-dollars, rounded half-even."""
    return int((to_decimal(usd) * MICROS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def usd_json(micros: int | None) -> float | None:
    """Micro-dollars as a JSON number with 6 decimals. Only for display; never summed."""
    if micros is None:
        return None
    return float(Decimal(micros) / MICROS_PER_USD)


def exact_usd(micros: int) -> str:
    """Every digit, for messages about one amount: 12 -> '$0.000012', 500000 -> '$0.5'."""
    return f"${Decimal(micros) / MICROS_PER_USD}"


def fmt_usd(micros: int | None) -> str:
    """For tables: 6 decimals below a dollar, 4 above."""
    if micros is None:
        return "-"
    d = Decimal(micros) / MICROS_PER_USD
    return f"${d:,.6f}" if abs(d) < 1 else f"${d:,.4f}"
