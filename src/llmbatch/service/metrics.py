"""Prometheus metrics, read from the store at each scrape, so the service and every worker report the same
ledger (spend and reservations are the ledger's sums, exact to the pico-dollar before the float):

- llmbatch_tasks{status}, llmbatch_jobs{status}
- llmbatch_attempts_total{error_class} (error_class "none" for calls that succeeded)
- llmbatch_spend_usd_total{provider,model,channel}, llmbatch_reserved_usd{provider,model,channel}
- llmbatch_provider_latency_seconds{provider} (histogram of call latencies)
- llmbatch_queue_depth{queue}: tasks queued in the store, and the Celery queue's messages when a broker is set
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import Engine, case, func, select

from ..money import PICOS_PER_USD
from ..config import Settings
from ..store.schema import attempts, jobs, tasks

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _usd(picos) -> float:
    return float(Decimal(int(picos or 0)) / PICOS_PER_USD)


class StoreCollector:
    def __init__(self, engine: Engine, broker_url: str | None = None):
        self.engine, self.broker_url = engine, broker_url

    def collect(self):
        with self.engine.connect() as conn:
            yield from self._counts(conn)
            yield from self._money(conn)
            yield self._latency(conn)
            queued = conn.execute(select(func.count()).where(tasks.c.status == "queued")).scalar_one()
        depth = GaugeMetricFamily(
            "llmbatch_queue_depth",
            "Work waiting: queued tasks in the store, messages in the Celery queue",
            labels=["queue"],
        )
        depth.add_metric(["store_tasks"], queued)
        celery = self._celery_depth()
        if celery is not None:
            depth.add_metric(["celery_units"], celery)
        yield depth

    def _counts(self, conn):
        t = GaugeMetricFamily("llmbatch_tasks", "Tasks by status (all jobs)", labels=["status"])
        for status, n in conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)):
            t.add_metric([status], n)
        j = GaugeMetricFamily("llmbatch_jobs", "Jobs by status", labels=["status"])
        for status, n in conn.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)):
            j.add_metric([status], n)
        a = CounterMetricFamily(
            "llmbatch_attempts", "Provider calls (ledger rows) by error class", labels=["error_class"]
        )
        eclass = func.coalesce(attempts.c.error_class, "none")
        for cls, n in conn.execute(select(eclass, func.count()).group_by(eclass)):
            a.add_metric([cls], n)
        return t, j, a

    def _money(self, conn):
        labels = ["provider", "model", "channel"]
        spend = CounterMetricFamily("llmbatch_spend_usd", "Settled spend in USD (the ledger's sum)", labels=labels)
        held = GaugeMetricFamily("llmbatch_reserved_usd", "Reservations not yet settled, USD", labels=labels)
        unsettled = case((attempts.c.settled.is_(False), attempts.c.reserved_picos), else_=0)
        q = select(
            attempts.c.provider,
            attempts.c.model,
            attempts.c.channel,
            func.sum(attempts.c.cost_picos),
            func.sum(unsettled),
        ).group_by(attempts.c.provider, attempts.c.model, attempts.c.channel)
        for provider, model, channel, cost, reserved in conn.execute(q):
            spend.add_metric([provider, model, channel], _usd(cost))
            held.add_metric([provider, model, channel], _usd(reserved))
        return spend, held

    def _latency(self, conn):
        h = HistogramMetricFamily("llmbatch_provider_latency_seconds", "Provider call latency", labels=["provider"])
        cols = [func.sum(case((attempts.c.latency_ms <= b * 1000, 1), else_=0)) for b in LATENCY_BUCKETS_S]
        q = (
            select(attempts.c.provider, func.count(), func.sum(attempts.c.latency_ms), *cols)
            .where(attempts.c.latency_ms.is_not(None))
            .group_by(attempts.c.provider)
        )
        for provider, n, total_ms, *le in conn.execute(q):
            buckets = [(str(b), int(c or 0)) for b, c in zip(LATENCY_BUCKETS_S, le)] + [("+Inf", int(n))]
            h.add_metric([provider], buckets, sum_value=(total_ms or 0) / 1000)
        return h

    def _celery_depth(self) -> int | None:
        if not self.broker_url or not self.broker_url.startswith(("redis://", "rediss://")):
            return None
        try:
            import redis

            from ..executors.celery_app import QUEUE

            return int(redis.Redis.from_url(self.broker_url, socket_timeout=2).llen(QUEUE))
        except Exception:  # a scrape must not fail because the broker is away
            return None


def registry_for(engine: Engine, broker_url: str | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(StoreCollector(engine, broker_url))
    return reg


def endpoint(engine: Engine, broker_url: str | None = None):
    from starlette.responses import Response

    reg = registry_for(engine, broker_url)

    def metrics(request):
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    return metrics


def serve_worker_metrics(settings: Settings) -> None:
    """A worker's /metrics on settings.metrics_port (a background thread of prometheus_client)."""
    assert settings.metrics_port is not None  # the caller checked it is set
    from prometheus_client import PlatformCollector, ProcessCollector, start_http_server

    from ..store.db import get_engine

    reg = registry_for(get_engine(settings.database_url), settings.broker_url)
    ProcessCollector(registry=reg)  # this worker's CPU and memory, beside the store's numbers
    PlatformCollector(registry=reg)
    start_http_server(settings.metrics_port, registry=reg)
