"""The service with a broker: batches run on real Celery worker processes over Postgres, and a worker serves
its own /metrics on LLMBATCH_METRICS_PORT."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmbatch.simulator import SimulatorConfig, SimulatorThread
from tests.integration.service_helpers import ServiceProcess, batch_lines, free_port
from tests.integration.test_service_api import wait_batch

pytestmark = pytest.mark.integration


def _families(url: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(httpx.get(url, timeout=10).text)}


def test_batches_run_on_celery_workers(tmp_path, fresh_postgres_url, redis_url, flush_redis, worker_procs):
    metrics_port = free_port()
    with SimulatorThread(SimulatorConfig(latency_s=0.02, error_rate=0.0)) as sim:
        env = {
            "LLMBATCH_DATABASE_URL": fresh_postgres_url,
            "LLMBATCH_BROKER_URL": redis_url,
            "LLMBATCH_SIMULATOR_URL": sim.url,
        }
        svc = ServiceProcess(tmp_path, extra_env=env).start()
        try:
            client = openai.OpenAI(base_url=svc.url + "/v1", api_key="x", max_retries=0)
            path = tmp_path / "in.jsonl"
            path.write_bytes(batch_lines(30))
            f = client.files.create(file=path.open("rb"), purpose="batch")
            b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            b = wait_batch(client, b.id, statuses=("in_progress",))
            time.sleep(0.5)  # no worker yet: the job's units wait in the Celery queue
            depth = {
                s.labels["queue"]: s.value for s in _families(svc.url + "/metrics")["llmbatch_queue_depth"].samples
            }
            assert depth["celery_units"] >= 1 and depth["store_tasks"] == 30
            worker_procs.start(1, env={**env, "LLMBATCH_METRICS_PORT": str(metrics_port)}, args=["--concurrency", "20"])
            done = wait_batch(client, b.id, timeout=120)
            assert done.status == "completed" and done.request_counts.completed == 30
            assert len(client.files.content(done.output_file_id).text.splitlines()) == 30
            worker = _families(f"http://127.0.0.1:{metrics_port}/metrics")
            service = _families(svc.url + "/metrics")
            spend = [
                sum(s.value for s in fams["llmbatch_spend_usd"].samples if s.name.endswith("_total"))
                for fams in (worker, service)
            ]
            assert spend[0] == spend[1] > 0  # both read the same ledger
            assert "process_resident_memory_bytes" in worker  # and the worker its own process
        finally:
            svc.stop()
