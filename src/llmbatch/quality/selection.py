"""Choosing a policy from calibration observations, with a guarantee. Pure.

For each candidate model m and escalation threshold t (escalate to the reference when m's output is invalid
or its confidence is below t), the policy's agreement with the reference on a sampled item is 1 when it
escalates (the reference's own answer) and m's agreement otherwise. Thresholds are tested in a fixed
sequence, from "escalate everything" down to "escalate only invalid outputs"; agreement can only fall along
it, and testing stops at the first threshold whose one-sided Clopper-Pearson lower bound is below the target
(fixed-sequence testing, as in Learn-then-Test). Each model's sequence is tested at level
(1 - confidence) / (number of candidate models) (Bonferroni). So, with probability at least `confidence`,
EVERY (model, threshold) that passed has a true agreement >= target on the population the sample was drawn
from, and therefore so does the cheapest of them, which is the one chosen. When none passes, the policy is
the reference model itself (agreement 1 by definition, its full cost).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .stats import clopper_pearson_lower

MAX_THRESHOLDS = 60


@dataclass(frozen=True)
class Item:
    """One sampled line as a candidate model answered it."""

    agrees: bool  # valid and agreeing with the reference (False when invalid or failed)
    valid: bool
    confidence: float | None
    cost_picos: int  # what the candidate's call cost
    ref_cost_picos: int  # what the reference's call on the same line cost


@dataclass
class ModelFigures:
    """Per model, for the calibration table and the policy file."""

    model: str
    n: int
    agreement: float  # plain: answer as given, invalid outputs count as disagreement
    lower_bound: float  # its one-sided bound at the adjusted confidence
    cost_per_task_picos: float
    has_confidence: bool
    threshold: float | None = None  # the lowest threshold that passed (None: no threshold, or none passed)
    policy_agreement: float | None = None  # with that threshold (escalations included)
    policy_lower_bound: float | None = None
    escalation_rate: float | None = None
    expected_cost_per_task_picos: float | None = None  # candidate + escalations; None when nothing passed
    passed: bool = False


@dataclass
class Choice:
    model: str  # the model that answers first (the reference itself when nothing cheaper passed)
    threshold: float | None
    n: int
    agreement: float
    lower_bound: float
    escalation_rate: float
    expected_cost_per_task_picos: float
    reference_cost_per_task_picos: float
    figures: list[ModelFigures] = field(default_factory=list)


def _thresholds(items: list[Item]) -> list[float] | None:
    confs = sorted({i.confidence for i in items if i.valid and i.confidence is not None}, reverse=True)
    if not confs or any(i.valid and i.confidence is None for i in items):
        return None
    if len(confs) > MAX_THRESHOLDS:  # an evenly spaced subset (by rank) keeps the sequence short
        step = len(confs) / MAX_THRESHOLDS
        confs = [confs[int(j * step)] for j in range(MAX_THRESHOLDS)]
    # "escalate everything" first, then each observed confidence (escalate below it), then 0 = no threshold
    return [float("inf"), *confs, 0.0]


class _Outcomes:
    """(agreements, escalations, mean cost per task) of model + escalation below any threshold t, in O(log n)
    per threshold: valid answers sorted by confidence, with prefix sums."""

    def __init__(self, items: list[Item]):
        self.n = len(items)
        valid = sorted((i for i in items if i.valid), key=lambda i: i.confidence or 0.0)
        invalid = [i for i in items if not i.valid]
        self.confs = [i.confidence or 0.0 for i in valid]
        self.agree_prefix, self.ref_prefix = [0], [0]
        for i in valid:
            self.agree_prefix.append(self.agree_prefix[-1] + i.agrees)
            self.ref_prefix.append(self.ref_prefix[-1] + i.ref_cost_picos)
        self.base_cost = sum(i.cost_picos for i in items) + sum(i.ref_cost_picos for i in invalid)
        self.n_invalid = len(invalid)

    def at(self, t: float) -> tuple[int, int, float]:
        below = len(self.confs) if t == float("inf") else bisect.bisect_left(self.confs, t)
        esc = self.n_invalid + below
        k = esc + self.agree_prefix[-1] - self.agree_prefix[below]
        return k, esc, (self.base_cost + self.ref_prefix[below]) / self.n


def evaluate_model(model: str, items: list[Item], *, target: float, alpha: float) -> ModelFigures:
    n = len(items)
    k_plain = sum(i.agrees for i in items)
    fig = ModelFigures(
        model=model,
        n=n,
        agreement=k_plain / n,
        lower_bound=clopper_pearson_lower(k_plain, n, 1 - alpha),
        cost_per_task_picos=sum(i.cost_picos for i in items) / n,
        has_confidence=_thresholds(items) is not None,
    )
    sequence = _thresholds(items) or [0.0]
    outcomes = _Outcomes(items)
    for t in sequence:
        k, esc, cost = outcomes.at(t)
        bound = clopper_pearson_lower(k, n, 1 - alpha)
        if bound < target:
            break  # fixed sequence: stop at the first failure
        fig.passed = True
        fig.threshold = None if t == 0.0 else t
        fig.policy_agreement, fig.policy_lower_bound = k / n, bound
        fig.escalation_rate, fig.expected_cost_per_task_picos = esc / n, cost
    return fig


def choose(
    reference: str, by_model: dict[str, list[Item]], ref_cost_per_task_picos: float, *, target: float, confidence: float
) -> Choice:
    """The cheapest passing (model, threshold), or the reference. `by_model` holds each candidate's items,
    aligned to the same sampled lines (lines the reference could not answer left out)."""
    alpha = (1 - confidence) / max(1, len(by_model))
    figures = [evaluate_model(m, items, target=target, alpha=alpha) for m, items in by_model.items() if items]
    n = max((f.n for f in figures), default=0)
    best = Choice(reference, None, n, 1.0, 1.0, 0.0, ref_cost_per_task_picos, ref_cost_per_task_picos, figures)
    for f in figures:
        if not f.passed:
            continue
        # evaluate_model sets every policy figure of a model that passed
        assert f.policy_agreement is not None and f.policy_lower_bound is not None
        assert f.escalation_rate is not None and f.expected_cost_per_task_picos is not None
        if f.expected_cost_per_task_picos < best.expected_cost_per_task_picos:
            best = Choice(
                f.model,
                f.threshold,
                f.n,
                f.policy_agreement,
                f.policy_lower_bound,
                f.escalation_rate,
                f.expected_cost_per_task_picos,
                ref_cost_per_task_picos,
                figures,
            )
    return best
