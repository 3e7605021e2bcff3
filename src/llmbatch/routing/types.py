"""What route() returns: candidates in order, the rejections with their reasons, and the health it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from ..catalog import ModelInfo
from ..money import exact_usd

_T = TypeVar("_T")


@dataclass(frozen=True)
class Candidate:
    model: ModelInfo
    estimated_picos: int  # expected cost of this request: in_est x input price + out_est x output price (exact)
    upper_bound_picos: int  # what the budget reservation holds for one attempt
    input_tokens_est: int
    input_tokens_upper: int
    output_tokens_est: int  # expected billed output: visible answer + expected reasoning, within the cap
    completion_cap: int  # max_output_tokens (+ the reasoning budget on reasoning models), within the model's max
    first: bool  # the cheapest candidate (the one the engine tries first)
    cheapest_picos: int  # the first candidate's estimate
    notes: tuple[str, ...] = ()  # how the adapter adapts the request for this model

    @property
    def reason(self) -> str:
        """Why it is a candidate, for `route --explain` and plans. Built on demand: the engine routes every
        task and never reads it, and formatting money is a noticeable share of routing."""
        m = self.model
        if self.first:
            why = f"cheapest eligible: {m.tier.value} tier, est {exact_usd(self.estimated_picos)}"
        else:
            why = (
                f"eligible: {m.tier.value} tier, est {exact_usd(self.estimated_picos)} "
                f"(+{exact_usd(self.estimated_picos - self.cheapest_picos)})"
            )
        return why + ("; " + ", ".join(self.notes) if self.notes else "")


@dataclass(frozen=True)
class Rejection:
    model: ModelInfo
    reason: str
    # Set only when money or health is the sole obstacle (rules "max_cost", "cooldown"): the model fits the
    # request, so its cost means something. None for every other rule.
    estimated_picos: int | None
    rule: str = ""  # stable name of the failed rule ("context", "tier", "max_cost", ...) for summaries


def _frozen(cls: type[_T], **fields: object) -> _T:
    """cls(**fields) for a frozen dataclass, built the way one is unpickled: the generated __init__ sets each
    field through its own object.__setattr__ call, and route() builds a Candidate for every eligible model
    and a Rejection for every model turned away by size, for every task (the Candidates alone were over a
    quarter of routing's time). Every field must be given: test_routing_fast checks that the objects equal
    the constructor's and have exactly the dataclass's fields."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    return obj


@dataclass(frozen=True)
class RouteDecision:
    candidates: tuple[Candidate, ...]  # eligible, cheapest first
    rejected: tuple[Rejection, ...]
    warnings: tuple[str, ...]

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def rejection_summary(self) -> str:
        """One line for a task nobody can serve, e.g. 'no eligible model: context (9), no vision (3)'."""
        counts: dict[str, int] = {}
        for r in self.rejected:
            label = r.rule or r.reason
            counts[label] = counts.get(label, 0) + 1
        parts = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"no eligible model: {parts}" if parts else "no eligible model: the catalog is empty"


@dataclass
class Health:
    """Observed state of models, passed in so routing stays pure. Keys are `provider/model`, or a provider name
    for a cooldown that covers every model of that provider."""

    cooldown_until: dict[str, float] = field(default_factory=dict)  # key -> epoch seconds
    latency_ms: dict[str, float] = field(default_factory=dict)  # model key -> observed mean latency

    def cooling(self, key: str, now: float) -> float | None:
        """Seconds left in `key`'s cooldown, or None when it is not cooling."""
        until = self.cooldown_until.get(key)
        if until is None or until <= now:
            return None
        return until - now
