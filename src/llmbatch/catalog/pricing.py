"""price(usage, model) -> Cost. The only place token counts become money.

Formula (DESIGN.md, one usage convention for every provider):
    (input - cached - cache_write) * input_price + cached * cached_price
    + cache_write * cache_write_price + output * output_price
times the batch discount when the batch channel was used, at the prices of the long-context tier the
request's input_tokens fall in (ModelInfo.price_tiers). Reasoning tokens are part of output_tokens and so are
billed at the output price. Every rate is a whole number of pico-dollars per token (the catalog checks it), so
every cost is an exact integer: nothing is rounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PricingError
from ..models import Usage
from . import ModelInfo, Rates


@dataclass(frozen=True)
class Cost:
    picos: int  # what the ledger records: exact
    uncached_input_picos: int
    cached_input_picos: int
    cache_write_picos: int
    output_picos: int


def check_usage(usage: Usage) -> None:
    fields = usage.model_dump()
    negative = [k for k, v in fields.items() if v < 0]
    if negative:
        raise PricingError(f"usage has negative token counts: {negative}")
    if usage.cached_tokens + usage.cache_write_tokens > usage.input_tokens:
        raise PricingError(
            f"usage is inconsistent: cached ({usage.cached_tokens}) + cache_write ({usage.cache_write_tokens}) "
            f"exceed input_tokens ({usage.input_tokens})"
        )
    if usage.reasoning_tokens > usage.output_tokens:
        raise PricingError(
            f"usage is inconsistent: reasoning_tokens ({usage.reasoning_tokens}) exceed output_tokens "
            f"({usage.output_tokens})"
        )


def price(usage: Usage, model: ModelInfo, *, batch: bool = False) -> Cost:
    check_usage(usage)
    r = model.rates(usage.input_tokens, batch=batch)
    if r is None:
        raise PricingError(f"{model.key} has no batch channel price; cannot price a batch-channel usage")
    return cost_at(usage, r)


def cost_at(usage: Usage, r: Rates) -> Cost:
    """The formula at given rates (pico-dollars per token): usage of one request, or a sum of requests that
    all fall in the same price tier (the formula is linear within a tier)."""
    uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens
    parts = (
        uncached * r.input,
        usage.cached_tokens * r.cached,
        usage.cache_write_tokens * r.cache_write,
        usage.output_tokens * r.output,
    )
    return Cost(sum(parts), *parts)


def estimate_picos(model: ModelInfo, input_tokens: int, output_tokens: int) -> int:
    """Expected cost of a request (routing): input at the uncached price, output at the output price, at
    the tier the expected input falls in."""
    r = model.rates(input_tokens)
    return input_tokens * r.input + output_tokens * r.output


def upper_bound_picos(model: ModelInfo, input_tokens_upper: int, completion_tokens_cap: int) -> int:
    """The most a call can cost: every input token at the dearest input rate (uncached, cached or cache
    write: a cache write usually costs more, and an override could make any of them the maximum) and the
    full completion cap at the output price, at the dearest tier the input could fall in."""
    dear_in, dear_out = model.dearest_rates(input_tokens_upper)
    return input_tokens_upper * dear_in + completion_tokens_cap * dear_out
