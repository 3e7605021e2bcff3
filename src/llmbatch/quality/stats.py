"""One-sided lower confidence bounds on a proportion, and the sample size a target needs. Pure, stdlib only.

- `clopper_pearson_lower(k, n, confidence)`: the exact bound. The largest p with P(X >= k | n, p) <= alpha,
  alpha = 1 - confidence, found by bisection on the binomial tail (computed in log space). It never
  under-covers: for any true p, P(bound > p) <= alpha.
- `wilson_lower(k, n, confidence)`: the Wilson score bound (normal approximation; close to exact for large n,
  can under-cover slightly near 0 or 1). Shown for comparison; the policy uses Clopper-Pearson.
- `sample_size(target, expected, confidence)`: the smallest n at which observing the expected agreement would
  give a Clopper-Pearson bound >= target.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist


def _log_pmf(i: int, n: int, p: float) -> float:
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [_log_pmf(i, n, p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


@functools.lru_cache(maxsize=65536)
def clopper_pearson_lower(k: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided lower bound on p from k successes in n trials (cached: calibration asks the same
    (k, n) for many thresholds)."""
    _check(k, n, confidence)
    if k == 0:
        return 0.0
    alpha = 1.0 - confidence
    if k == n:
        return alpha ** (1.0 / n)  # closed form: p^n = alpha
    lo, hi = 0.0, k / n
    for _ in range(60):  # P(X >= k | p) grows with p: bisect for the p where it reaches alpha
        mid = (lo + hi) / 2
        if binom_sf(k, n, mid) > alpha:
            hi = mid
        else:
            lo = mid
    return lo


def wilson_lower(k: int, n: int, confidence: float = 0.95) -> float:
    _check(k, n, confidence)
    z = NormalDist().inv_cdf(confidence)
    phat = k / n
    denom = 1 + z * z / n
    centre = phat + z * z / (2 * n)
    spread = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / denom)


def sample_size(target: float, expected: float, confidence: float = 0.95, *, max_n: int = 100_000) -> int | None:
    """Smallest n such that floor(expected x n) agreements out of n give a Clopper-Pearson bound >= target;
    None when even max_n is not enough (expected too close to target)."""
    if not 0 < target < 1 or not 0 < expected <= 1 or expected <= target:
        return None
    n = 1
    while n <= max_n:
        if clopper_pearson_lower(math.floor(expected * n + 1e-9), n, confidence) >= target:
            # step back to the smallest n that works (the bound is not monotone in n at each integer)
            lo = max(1, n // 2)
            for m in range(lo, n + 1):
                if clopper_pearson_lower(math.floor(expected * m + 1e-9), m, confidence) >= target:
                    return m
            return n
        n *= 2
    return None


def _check(k: int, n: int, confidence: float) -> None:
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
