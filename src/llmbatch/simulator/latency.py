"""How long an answer takes: fixed (latency_s, +- a uniform jitter) or lognormal from its p50 and p99.

Real provider latency has a long right tail: most answers come near the median, a few take many times it.
A lognormal with median p50 and 99th percentile p99 has mu = ln(p50) and sigma = ln(p99 / p50) / z99
(z99 = 2.3263, the standard normal's 99th percentile). Per model, `model_overrides` may set
latency_p50_s / latency_p99_s (its own lognormal) or latency_s (fixed); a model without either follows the
global settings.
"""

from __future__ import annotations

import math
import random

Z99 = 2.3263478740408408  # the standard normal's 99th percentile


def lognormal_sigma(p50: float, p99: float) -> float:
    return math.log(p99 / p50) / Z99 if p99 > p50 else 0.0


def answer_latency(cfg, model_id: str, rng: random.Random) -> float:
    """Seconds to wait before answering one request for `model_id` under SimulatorConfig `cfg`."""
    own = cfg.model_overrides.get(model_id) or {}
    p50 = own.get("latency_p50_s")
    if p50 is not None:
        return _lognormal(p50, own.get("latency_p99_s", p50), rng)
    if "latency_s" in own:
        return _fixed(own["latency_s"], cfg.latency_jitter_s, rng)
    if cfg.latency_p50_s is not None:
        return _lognormal(cfg.latency_p50_s, cfg.latency_p99_s or cfg.latency_p50_s, rng)
    return _fixed(cfg.latency_s, cfg.latency_jitter_s, rng)


def _lognormal(p50: float, p99: float, rng: random.Random) -> float:
    if p50 <= 0:
        return 0.0
    return rng.lognormvariate(math.log(p50), lognormal_sigma(p50, p99))


def _fixed(latency: float, jitter: float, rng: random.Random) -> float:
    if jitter:
        return max(0.0, latency + rng.uniform(-jitter, jitter))
    return latency
