"""Invariants of deploy/ (no Docker engine runs here, so the files are checked as data) and of the
example jobs in jobs/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmbatch.models import JobSpec, TaskLine

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
JOBS = REPO / "jobs"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _redis_conf() -> dict[str, str]:
    conf = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key.lower()] = value.strip()
    return conf


def test_redis_conf_is_durable_and_never_evicts():
    conf = _redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"


def test_compose_redis_uses_aof_and_noeviction(compose):
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = redis["command"]
    assert any(v.startswith("./redis.conf:") for v in redis["volumes"]), "deploy/redis.conf must be mounted"
    conf_path = next(v.split(":")[1] for v in redis["volumes"] if v.startswith("./redis.conf:"))
    assert conf_path in cmd, "redis-server must be started with the mounted redis.conf"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"]), "the AOF must live on a volume"


def test_compose_postgres_has_volume_and_healthcheck(compose):
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:15")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    env = pg["environment"]
    url = compose["services"]["worker"]["environment"]["LLMBATCH_DATABASE_URL"]
    assert (
        url
        == f"postgresql+psycopg://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}"
    )


def test_compose_worker_can_scale(compose):
    worker = compose["services"]["worker"]
    # A fixed name or a host port would stop `docker compose up --scale worker=N`.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][:2] == ["llmbatch", "worker"] and "--concurrency" in worker["command"]
    env = worker["environment"]
    assert env["LLMBATCH_BROKER_URL"] == "redis://redis:6379/0"
    assert env["LLMBATCH_SIMULATOR_URL"].startswith("http://simulator:")
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert not any(k.endswith("_API_KEY") for k in env), (
        "keys come from an uncommitted env file, never the compose file"
    )


def test_compose_simulator_is_reachable_by_workers(compose):
    sim = compose["services"]["simulator"]
    cmd = sim["command"]
    assert cmd[:2] == ["llmbatch", "simulator"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "loopback would be unreachable from other containers"
    port = cmd[cmd.index("--port") + 1]
    assert compose["services"]["worker"]["environment"]["LLMBATCH_SIMULATOR_URL"] == f"http://simulator:{port}"


def test_compose_flower_on_5555(compose):
    flower = compose["services"]["flower"]
    assert "flower" in flower["command"] and "--broker=redis://redis:6379/0" in flower["command"]
    assert "5555:5555" in flower["ports"]


def test_compose_submit_is_a_one_shot_example(compose):
    submit = compose["services"]["submit"]
    assert submit["profiles"] == ["submit"], "it must not run on a plain `docker compose up`"
    assert submit["restart"] == "no"
    cmd = submit["command"]
    assert cmd[:3] == ["llmbatch", "submit", "/jobs/reviews.jsonl"] and "--simulate" in cmd
    assert cmd[cmd.index("--labels") + 1] == "positive,negative,neutral"
    assert any(v.endswith(":/jobs:ro") for v in submit["volumes"])


def test_dockerfile_installs_postgres_extra_and_runs_worker():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "pip install '.[postgres,serve]'" in text  # serve: the service, and the workers' /metrics
    assert '"llmbatch", "worker", "--concurrency", "200"' in text
    assert re.search(r"^USER ", text, re.M), "workers must not run as root"


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> list[dict]:
    return [d for d in _k8s_docs() if d.get("kind") == kind]


def _worker_deployment() -> dict:
    return next(d for d in _by_kind("Deployment") if d["metadata"]["name"] == "llmbatch-worker")


def test_k8s_keda_scales_the_worker_on_the_llmbatch_queue():
    deployment = _worker_deployment()
    (scaled,) = _by_kind("ScaledObject")
    assert scaled["apiVersion"].startswith("keda.sh/")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    # Celery's Redis transport keeps a queue as a list named after it; the queue is `llmbatch`.
    assert trigger["metadata"]["listName"] == "llmbatch"
    assert int(trigger["metadata"]["listLength"]) > 0
    assert scaled["spec"]["maxReplicaCount"] > scaled["spec"]["minReplicaCount"]


def test_k8s_keys_come_from_secrets_only():
    deployment = _worker_deployment()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["llmbatch", "worker"]
    secret_refs = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    secrets = {s["metadata"]["name"]: s for s in _by_kind("Secret")}
    assert secret_refs and secret_refs <= set(secrets)
    for e in container.get("env", []):
        if e["name"].endswith(("_KEY", "_PASSWORD", "DATABASE_URL")):
            assert "secretKeyRef" in e.get("valueFrom", {}), f"{e['name']} must come from a Secret"
    for cm in _by_kind("ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not key.endswith("_KEY"), f"ConfigMap {cm['metadata']['name']} holds {key}"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key} carries a password"
    for s in secrets.values():
        for key, value in (s.get("stringData") or {}).items():
            if key.endswith("_API_KEY"):
                assert value == "", "the example Secret must not carry a key"
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]


# ---------------------------------------------------------------- the service, metrics, Grafana, KEDA


def test_compose_runs_the_service_on_all_interfaces(compose):
    svc = compose["services"]["service"]
    cmd = svc["command"]
    assert cmd[:2] == ["llmbatch", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert f"{port}:{port}" in svc["ports"]
    env = svc["environment"]
    worker_env = compose["services"]["worker"]["environment"]
    for key in ("LLMBATCH_DATABASE_URL", "LLMBATCH_BROKER_URL"):  # the same store and queue as the workers
        assert env[key] == worker_env[key]
    files_dir = env["LLMBATCH_SERVICE_FILES_DIR"]
    assert any(v.endswith(":" + files_dir) and not v.startswith(".") for v in svc["volumes"]), "files on a volume"
    assert f"{port}/metrics" in " ".join(svc["healthcheck"]["test"])
    assert not any(k.endswith("_API_KEY") for k in env)


def test_prometheus_scrapes_the_service_and_every_worker(compose):
    worker_port = compose["services"]["worker"]["environment"]["LLMBATCH_METRICS_PORT"]
    assert worker_port in compose["services"]["worker"]["expose"]
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    svc_port = compose["services"]["service"]["command"][-1]
    assert jobs["llmbatch-service"]["static_configs"][0]["targets"] == [f"service:{svc_port}"]
    (sd,) = jobs["llmbatch-worker"]["dns_sd_configs"]
    assert sd["names"] == ["worker"] and str(sd["port"]) == worker_port
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["monitoring"]
        for volume in compose["services"][name]["volumes"]:
            assert (DEPLOY / volume.split(":")[0]).exists(), volume


def _exported_metric_names(tmp_path) -> set[str]:
    """What /metrics exports, from the collector itself over an empty store."""
    from llmbatch.service.metrics import StoreCollector
    from llmbatch.store.db import get_engine

    return {family.name for family in StoreCollector(get_engine(f"sqlite:///{tmp_path}/m.db")).collect()}


def _base(name: str) -> str:
    return re.sub(r"_(total|bucket|count|sum)$", "", name)


def test_grafana_dashboard_queries_metrics_that_exist(tmp_path):
    exported = _exported_metric_names(tmp_path)
    dash = json.loads((DEPLOY / "grafana" / "llmbatch-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    used = set()
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            used |= {_base(n) for n in re.findall(r"\b(llmbatch_[a-z_]+)", t["expr"])}
    assert used and used <= exported, used - exported
    # spend, reservations, tasks, error classes, latency and queue depth each have a panel
    assert {
        "llmbatch_spend_usd",
        "llmbatch_reserved_usd",
        "llmbatch_tasks",
        "llmbatch_attempts",
        "llmbatch_provider_latency_seconds",
        "llmbatch_queue_depth",
    } <= used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_k8s_service_deployment_and_metrics_ports():
    deployments = {d["metadata"]["name"]: d for d in _by_kind("Deployment")}
    svc = deployments["llmbatch-service"]
    (container,) = svc["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["llmbatch", "serve"]
    assert {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e} == {"llmbatch-secrets"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    files_dir = next(e["value"] for e in container["env"] if e["name"] == "LLMBATCH_SERVICE_FILES_DIR")
    assert files_dir in mounts and container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    (service,) = _by_kind("Service")
    assert service["spec"]["selector"] == svc["spec"]["selector"]["matchLabels"]
    (config,) = _by_kind("ConfigMap")
    (worker,) = deployments["llmbatch-worker"]["spec"]["template"]["spec"]["containers"]
    assert {"containerPort": int(config["data"]["LLMBATCH_METRICS_PORT"]), "name": "metrics"} in worker["ports"]


def test_keda_prometheus_trigger_example(tmp_path):
    (doc,) = [
        d for d in yaml.safe_load_all((DEPLOY / "k8s" / "examples" / "keda-prometheus-trigger.yaml").read_text()) if d
    ]
    assert doc["kind"] == "ScaledObject" and doc["spec"]["scaleTargetRef"]["name"] == "llmbatch-worker"
    (trigger,) = doc["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0
    names = set(re.findall(r"\b(llmbatch_[a-z_]+)", trigger["metadata"]["query"]))
    assert names and names <= _exported_metric_names(tmp_path)


# ---------------------------------------------------------------- example jobs


def _lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (JOBS / name).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    "name,task,count,prefix",
    [
        ("reviews.jsonl", "classify", 200, "rev-"),
        ("articles.jsonl", "summarize", 50, "art-"),
        ("products.jsonl", "extract", 30, "prod-"),
    ],
)
def test_example_lines_are_valid(name, task, count, prefix):
    rows = _lines(name)
    assert len(rows) == count
    assert len({r["id"] for r in rows}) == count, "ids are unique within a job"
    assert len({r["input"] for r in rows}) == count, "no duplicate texts"
    for row in rows:
        line = TaskLine.model_validate(row)
        assert line.task == task and line.id.startswith(prefix)


def test_articles_are_150_to_400_words():
    for row in _lines("articles.jsonl"):
        assert 150 <= len(row["input"].split()) <= 400, row["id"]
        assert row["max_output_tokens"] == 120


def test_product_expected_values_match_the_schema():
    from jsonschema import Draft202012Validator

    for row in _lines("products.jsonl"):
        Draft202012Validator(row["schema"]).validate(row["metadata"]["expected"])


def test_reviews_spec_is_a_valid_jobspec():
    spec = JobSpec.model_validate(yaml.safe_load((JOBS / "reviews.yaml").read_text()))
    assert spec.task == "classify" and spec.labels == ["positive", "negative", "neutral"]
    assert spec.budget_usd == "1.00" and spec.max_output_tokens == 8


def test_examples_are_reproducible(tmp_path):
    subprocess.run([sys.executable, str(JOBS / "make_examples.py"), str(tmp_path)], check=True, capture_output=True)
    for name in ("reviews.jsonl", "articles.jsonl", "products.jsonl"):
        assert (tmp_path / name).read_bytes() == (JOBS / name).read_bytes(), (
            f"jobs/{name} is stale: run jobs/make_examples.py"
        )
