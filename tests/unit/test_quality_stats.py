"""Issue 17: the statistics behind the quality floor -- exact bounds, and that the guarantee holds over many
seeds, for one proportion and for the whole threshold-selection procedure."""

from __future__ import annotations

import math
import random

import pytest

from llmbatch.quality.selection import Item, choose
from llmbatch.quality.stats import binom_sf, clopper_pearson_lower, sample_size, wilson_lower


def test_clopper_pearson_matches_the_beta_quantile():
    # scipy.stats.beta.ppf(0.05, k, n - k + 1), computed once offline
    assert clopper_pearson_lower(95, 100, 0.95) == pytest.approx(0.8977466223567255, abs=1e-9)
    assert clopper_pearson_lower(294, 300, 0.95) == pytest.approx(0.9609089413190414, abs=1e-9)
    assert clopper_pearson_lower(0, 50) == 0.0
    assert clopper_pearson_lower(50, 50, 0.95) == pytest.approx(0.05 ** (1 / 50))
    # definition: at the bound, seeing >= k successes has probability alpha
    lb = clopper_pearson_lower(180, 200, 0.9)
    assert binom_sf(180, 200, lb) == pytest.approx(0.1, abs=1e-6)


def test_wilson_is_close_to_exact_for_large_n_and_both_below_the_estimate():
    for k, n in ((950, 1000), (480, 500), (70, 100)):
        cp, w = clopper_pearson_lower(k, n), wilson_lower(k, n)
        assert cp < k / n and w < k / n
        assert abs(cp - w) < 0.01


def test_sample_size_meets_the_target():
    n = sample_size(0.95, 0.985, 0.95)
    assert n is not None and clopper_pearson_lower(math.floor(0.985 * n + 1e-9), n, 0.95) >= 0.95
    assert sample_size(0.95, 0.95) is None  # expecting exactly the target can never prove it


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


@pytest.mark.parametrize("p_true, n", [(0.95, 200), (0.90, 60), (0.99, 300)])
def test_bound_holds_at_the_stated_confidence_over_many_seeds(p_true, n):
    confidence, seeds = 0.95, 2000
    above = 0
    for seed in range(seeds):
        k = _binomial(random.Random(seed), n, p_true)
        above += clopper_pearson_lower(k, n, confidence) > p_true
    share, alpha = above / seeds, 1 - confidence
    print(f"p={p_true} n={n}: bound above the truth in {share:.4f} of {seeds} seeds (allowed {alpha})")
    assert share <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)


def _population(rng: random.Random, size: int) -> list[Item]:
    """A cheap model that agrees on ~90% (below a 0.95 target), with informative but overlapping confidence."""
    out = []
    for _ in range(size):
        d = rng.random()
        agrees = rng.random() >= 0.2 * d
        z = rng.random()
        conf = 0.98 - 0.35 * d - 0.25 * z if agrees else 0.7 - 0.3 * d - 0.45 * z
        out.append(Item(agrees=agrees, valid=True, confidence=round(conf, 3), cost_picos=1, ref_cost_picos=20))
    return out


def _true_agreement(pop: list[Item], threshold: float | None) -> float:
    if threshold is None:
        return sum(i.agrees for i in pop) / len(pop)
    return sum(1 if i.confidence < threshold else i.agrees for i in pop) / len(pop)


def test_chosen_policy_meets_the_target_at_the_stated_confidence_over_many_seeds():
    """The whole procedure (threshold search by fixed-sequence testing, Bonferroni over two models): the share
    of seeds whose chosen policy truly agrees less than the target stays within 1 - confidence."""
    target, confidence, seeds, n = 0.95, 0.9, 300, 150
    pops = {"a": _population(random.Random(-1), 20_000), "b": _population(random.Random(-2), 20_000)}
    misses = cheap = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        idx = [rng.randrange(20_000) for _ in range(n)]
        by_model = {m: [pop[i] for i in idx] for m, pop in pops.items()}
        c = choose("ref", by_model, 20, target=target, confidence=confidence)
        if c.model == "ref":
            continue
        cheap += 1
        misses += _true_agreement(pops[c.model], c.threshold) < target
    alpha = 1 - confidence
    print(f"cheap policy chosen in {cheap}/{seeds} seeds; true agreement below {target} in {misses}")
    assert cheap > seeds // 2, "the procedure should usually find a cheaper policy here"
    assert misses / seeds <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)
    # and the plain cheap model alone would not have met the target (so the thresholds are doing the work)
    assert _true_agreement(pops["a"], None) < target
