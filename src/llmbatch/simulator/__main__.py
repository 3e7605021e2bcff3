"""python -m llmbatch.simulator [--host H] [--port P] [--latency S] [--fault NAME=RATE ...]"""

from __future__ import annotations

import argparse
import json

from .config import FAULTS, SimulatorConfig
from .server import run_server


def _fault(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    if not sep or name not in FAULTS:
        raise argparse.ArgumentTypeError(f"expected NAME=RATE with NAME in {', '.join(FAULTS)}, got {text!r}")
    try:
        return name, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate must be a number, got {rate!r}") from None


def parse_args(argv: list[str] | None = None) -> tuple[str, int, SimulatorConfig]:
    p = argparse.ArgumentParser(
        prog="python -m llmbatch.simulator",
        description="Serve imitations of the OpenAI, Anthropic and Gemini APIs on loopback.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--latency", type=float, default=0.0, help="mean seconds added to each answer")
    p.add_argument("--latency-jitter", type=float, default=0.0, help="latency varies uniformly by +- this")
    p.add_argument(
        "--latency-p50",
        type=float,
        default=None,
        help="lognormal latency: median seconds (replaces --latency/--latency-jitter)",
    )
    p.add_argument("--latency-p99", type=float, default=None, help="lognormal latency: 99th percentile seconds")
    p.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 429 or 5xx")
    p.add_argument("--rpm", type=int, default=None, help="requests per minute per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mini-error-rate",
        type=float,
        default=0.05,
        help="how often mini-tier models answer wrongly (standard: a fifth of it)",
    )
    p.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="NAME=RATE",
        help=f"repeatable; NAME in {', '.join(FAULTS)}",
    )
    p.add_argument(
        "--batch-turnaround",
        type=float,
        default=1.0,
        help="seconds a batch takes to finish (0: at once; negative: never)",
    )
    p.add_argument("--batch-fail-rate", type=float, default=0.0, help="share of batch lines that fail")
    p.add_argument(
        "--flex-unavailable", type=float, default=0.0, help="share of flex calls answered 429 resource unavailable"
    )
    p.add_argument(
        "--config-json",
        default=None,
        help="a JSON object of further SimulatorConfig fields (model_overrides, extra_models, ...)",
    )
    a = p.parse_args(argv)
    data = {
        "latency_s": a.latency,
        "latency_jitter_s": a.latency_jitter,
        "error_rate": a.error_rate,
        "rpm": a.rpm,
        "seed": a.seed,
        "mini_error_rate": a.mini_error_rate,
        "faults": dict(a.fault),
        "latency_p50_s": a.latency_p50,
        "latency_p99_s": a.latency_p99,
        "batch_turnaround_s": a.batch_turnaround,
        "batch_fail_rate": a.batch_fail_rate,
        "flex_unavailable": a.flex_unavailable,
    }
    try:
        if a.config_json:
            data.update(json.loads(a.config_json))
        config = SimulatorConfig.from_dict(data)
    except ValueError as e:
        p.error(str(e))
    return a.host, a.port, config


def main(argv: list[str] | None = None) -> None:
    host, port, config = parse_args(argv)
    run_server(host, port, config)


if __name__ == "__main__":
    main()
