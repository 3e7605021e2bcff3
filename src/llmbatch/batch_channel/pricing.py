"""What a batch line may cost (its reservation) and what it did cost (its settlement), at the batch price."""

from __future__ import annotations

import logging

from ..catalog import ModelInfo
from ..catalog.pricing import price
from ..errors import PricingError
from ..models import Usage
from ..routing import Candidate

log = logging.getLogger("llmbatch.batch")


def batch_upper_bound(cand: Candidate) -> int:
    """The most one batch line can cost: every input token at the dearest input rate and the whole completion
    cap, at the batch price (through catalog.pricing, so the ledger's unit is followed)."""
    key = (cand.model.key, cand.input_tokens_upper, cand.completion_cap)
    bound = _BOUNDS.get(key)
    if bound is None:  # a million similar lines share a few hundred keys
        if len(_BOUNDS) > 10_000:
            _BOUNDS.clear()
        bound = _BOUNDS[key] = _bound(cand.model, cand.input_tokens_upper, cand.completion_cap)
    return bound


_BOUNDS: dict[tuple[str, int, int], int] = {}


def _bound(model: ModelInfo, n: int, cap: int) -> int:
    usages = (
        Usage(input_tokens=n, output_tokens=cap),
        Usage(input_tokens=n, cached_tokens=n, output_tokens=cap),
        Usage(input_tokens=n, cache_write_tokens=n, output_tokens=cap),
    )
    return max(price(u, model, batch=True).picos for u in usages)


def batch_cost(usage: Usage, model: ModelInfo, reserved: int) -> tuple[int, str, str | None]:
    """A line's cost from its usage at the batch price; usage that cannot be priced is charged its bound."""
    try:
        return price(usage, model, batch=True).picos, "usage", None
    except PricingError as e:
        log.error("cannot price batch usage for %s: %s; charging the reserved upper bound", model.key, e)
        return reserved, "unpriced", str(e)
