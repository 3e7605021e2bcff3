"""The simulator's latency model: lognormal from p50/p99 (globally and per model), fixed, and validation."""

from __future__ import annotations

import random

import pytest

from llmbatch.simulator.__main__ import parse_args
from llmbatch.simulator.config import SimulatorConfig
from llmbatch.simulator.latency import answer_latency
from llmbatch.simulator.server import config_args


def _quantiles(cfg: SimulatorConfig, model: str, n: int = 40_000) -> tuple[float, float]:
    rng = random.Random(7)
    xs = sorted(answer_latency(cfg, model, rng) for _ in range(n))
    return xs[n // 2], xs[int(n * 0.99)]


def test_lognormal_has_the_asked_median_and_tail():
    p50, p99 = _quantiles(SimulatorConfig(latency_p50_s=1.0, latency_p99_s=8.0), "gpt-4o")
    assert p50 == pytest.approx(1.0, rel=0.05)
    assert p99 == pytest.approx(8.0, rel=0.12)


def test_per_model_lognormal_and_fixed_override_the_global_one():
    cfg = SimulatorConfig(
        latency_p50_s=1.0,
        latency_p99_s=8.0,
        model_overrides={"fast": {"latency_p50_s": 0.1, "latency_p99_s": 0.3}, "slow": {"latency_s": 5.0}},
    )
    p50, p99 = _quantiles(cfg, "fast")
    assert p50 == pytest.approx(0.1, rel=0.05) and p99 == pytest.approx(0.3, rel=0.12)
    assert answer_latency(cfg, "slow", random.Random(1)) == 5.0
    # Without any lognormal setting, latency_s +- jitter as before.
    plain = SimulatorConfig(latency_s=0.5, latency_jitter_s=0.1)
    assert all(0.4 <= answer_latency(plain, "m", random.Random(i)) <= 0.6 for i in range(50))
    assert answer_latency(SimulatorConfig(latency_p50_s=0.2), "m", random.Random(1)) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"latency_p50_s": 1.0, "latency_p99_s": 0.5}, "must be >="),
        ({"latency_p99_s": 2.0}, "needs latency_p50_s"),
        ({"latency_p50_s": -1.0}, ">= 0"),
        ({"model_overrides": {"m": {"latency_p99_s": 2.0}}}, "model_overrides.m.latency_p99_s needs"),
    ],
)
def test_bad_percentiles_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        SimulatorConfig(**bad)


def test_command_line_round_trip():
    cfg = SimulatorConfig(
        latency_p50_s=1.0, latency_p99_s=8.0, model_overrides={"m": {"latency_p50_s": 0.2, "latency_p99_s": 0.9}}
    )
    _, _, parsed = parse_args(config_args(cfg))
    assert parsed == cfg
