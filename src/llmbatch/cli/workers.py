"""Long-running processes besides `serve`: a Celery worker, and the bundled provider simulator."""

from __future__ import annotations

import click

from ..errors import InputError
from .common import current_settings
from .main import main


@main.command()
@click.option(
    "--concurrency", type=click.IntRange(min=1), help="Calls in flight in this process (default from config)."
)
@click.option("--simulate", is_flag=True, help="Treat every job as simulated (never call a paid API).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency, simulate, loglevel):
    """Start a Celery worker for the configured broker."""
    from .. import jobs

    settings = current_settings()
    if not settings.broker_url:
        raise InputError("worker needs LLMBATCH_BROKER_URL (e.g. redis://localhost:6379/0)")
    jobs.store(settings)  # migrate and fail fast on a bad store URL
    if settings.metrics_port:
        from ..service import check_installed
        from ..service.metrics import serve_worker_metrics

        check_installed()
        serve_worker_metrics(settings)
    from ..executors.celery_app import start_worker

    start_worker(concurrency=concurrency or settings.concurrency, force_simulate=simulate, loglevel=loglevel)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--latency", type=float, default=0.0, show_default=True, help="Mean seconds per response.")
@click.option("--latency-jitter", type=float, default=0.0, show_default=True)
@click.option("--latency-p50", type=float, default=None, help="Lognormal latency: median seconds (replaces --latency).")
@click.option("--latency-p99", type=float, default=None, help="Lognormal latency: 99th percentile seconds (the tail).")
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Fraction answered 429 or 5xx.")
@click.option("--rpm", type=int, default=None, help="Requests per minute per model before 429.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    help="NAME=RATE, e.g. hang=0.01 (storm429, burst5xx, hang, reset, malformed, truncated, slow_body).",
)
@click.option(
    "--batch-turnaround",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds a batch takes to finish (0: at once; negative: never).",
)
@click.option("--batch-fail-rate", type=float, default=0.0, show_default=True, help="Share of batch lines that fail.")
@click.option(
    "--flex-unavailable",
    type=float,
    default=0.0,
    show_default=True,
    help="Share of flex calls answered 429 resource unavailable.",
)
def simulator(
    host,
    port,
    latency,
    latency_jitter,
    latency_p50,
    latency_p99,
    error_rate,
    rpm,
    seed,
    faults,
    batch_turnaround=1.0,
    batch_fail_rate=0.0,
    flex_unavailable=0.0,
):
    """Run the bundled provider simulator (OpenAI, Anthropic and Gemini APIs) on loopback."""
    from ..simulator import SimulatorConfig, run_server

    fault_rates = {}
    for f in faults:
        name, _, rate = f.partition("=")
        try:
            fault_rates[name] = float(rate)
        except ValueError:
            raise click.UsageError(f"--fault {f!r}: expected NAME=RATE") from None
    try:
        cfg = SimulatorConfig(
            latency_s=latency,
            latency_jitter_s=latency_jitter,
            error_rate=error_rate,
            rpm=rpm,
            seed=seed,
            faults=fault_rates,
            latency_p50_s=latency_p50,
            latency_p99_s=latency_p99,
            batch_turnaround_s=batch_turnaround,
            batch_fail_rate=batch_fail_rate,
            flex_unavailable=flex_unavailable,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    run_server(host, port, cfg)
