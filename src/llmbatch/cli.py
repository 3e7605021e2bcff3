"""The `llmbatch` command: thin click commands over the library. Exit codes (DESIGN.md): 0 ok; 2 usage or
input error; 3 the job finished with failed tasks; 4 the job stopped on its budget cap; 5 cancelled."""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

import click
import orjson

from . import __version__
from .config import Settings, load_settings
from .errors import ConfigError, InputError, LLMBatchError, StoreError
from .models import JobSpec
from .money import exact_usd

EXIT_OK, EXIT_INPUT, EXIT_FAILED, EXIT_BUDGET, EXIT_CANCELLED = 0, 2, 3, 4, 5
EXIT_FOR_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "budget_exhausted": EXIT_BUDGET,
                   "cancelled": EXIT_CANCELLED}
MAX_ERRORS_SHOWN = 20


def _err(msg: str) -> None:
    click.echo(f"llmbatch: {msg}", err=True)


def _print_json(obj) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode())


def _settings(**overrides) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None


def _reading(engine):
    from .store.db import reading

    return reading(engine)


def _engine(settings: Settings):
    from .store.db import get_engine

    try:
        return get_engine(settings.database_url)
    except StoreError as e:
        _err(str(e))
        sys.exit(EXIT_INPUT)


# ------------------------------------------------------------------------------------- job options

def job_options(f):
    opts = [
        click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False), help="Job spec YAML (defaults and limits)."),
        click.option("--task", type=click.Choice(["summarize", "classify", "extract", "chat"]), help="Default task for lines without one."),
        click.option("--labels", help="Comma-separated labels for classify lines without their own."),
        click.option("--schema", "schema_path", type=click.Path(exists=True, dir_okay=False), help="JSON Schema file for extract lines."),
        click.option("--budget", help="Hard cap for the job, in USD (e.g. 40 or 0.25)."),
        click.option("--max-cost-per-task", help="Skip tasks whose cheapest eligible estimate exceeds this (USD)."),
        click.option("--min-tier", type=click.Choice(["mini", "standard", "frontier"]), help="Lowest model tier allowed."),
        click.option("--models", "allow", help="Comma-separated allow-list of models (provider/model or model)."),
        click.option("--deny", help="Comma-separated deny-list of models."),
        click.option("--model", "pin", help="Pin every line to this model (no routing)."),
        click.option("--max-output-tokens", type=int, help="Default output cap per task."),
        click.option("--simulate", is_flag=True, help="Send every call to the bundled simulator (no API keys, no cost)."),
        click.option("--no-escalate", is_flag=True, help="Do not escalate to a higher tier when output fails validation."),
        click.option("--strict", is_flag=True, help="Refuse the whole file on the first bad line (exit 2, nothing written)."),
        click.option("--name", help="A name for the job."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _comma_list(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def build_spec(spec_path, task, labels, schema_path, budget, max_cost_per_task, min_tier, allow, deny, pin,
               max_output_tokens, simulate, no_escalate, strict, name) -> JobSpec:
    import yaml
    from pydantic import ValidationError

    data: dict = {}
    if spec_path:
        try:
            data = yaml.safe_load(Path(spec_path).read_text("utf-8")) or {}
        except yaml.YAMLError as e:
            raise click.UsageError(f"{spec_path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise click.UsageError(f"{spec_path}: a job spec is a mapping of settings")
    flags = {
        "task": task, "name": name, "min_tier": min_tier, "model": pin, "max_output_tokens": max_output_tokens,
        "labels": _comma_list(labels), "models": _comma_list(allow), "deny": _comma_list(deny),
        "budget_usd": budget, "max_cost_per_task_usd": max_cost_per_task,
    }
    if schema_path:
        try:
            flags["schema"] = orjson.loads(Path(schema_path).read_bytes())
        except orjson.JSONDecodeError as e:
            raise click.UsageError(f"{schema_path}: invalid JSON: {e}") from None
    data.update({k: v for k, v in flags.items() if v is not None})
    if simulate:
        data["simulate"] = True
    if no_escalate:
        data["escalate"] = False
    if strict:
        data["strict"] = True
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise click.UsageError(f"job spec: {where}: {first['msg']}") from None


def _create(settings: Settings, input_path: str, spec: JobSpec, executor: str, as_json: bool):
    from .jobs import create_job

    try:
        job_id, report = create_job(settings, input_path, spec, executor=executor, strict=spec.strict)
    except InputError as e:
        _err(f"{input_path}: {e}")
        if spec.strict:
            _err("nothing was written (--strict); fix the line or drop --strict to run the valid lines")
        sys.exit(EXIT_INPUT)
    except StoreError as e:
        _err(str(e))
        sys.exit(EXIT_INPUT)
    _show_line_errors(input_path, report.errors, report.rejected,
                      more=f"; `llmbatch status {job_id} --errors` lists them",
                      summary=f"{report.rejected} line(s) rejected, {report.accepted} accepted; the accepted lines run")
    if not as_json:
        click.echo(f"job {job_id}: {report.accepted} tasks", err=True)
    return job_id, report


def _finish_output(settings: Settings, job_id: str, as_json: bool) -> int:
    from .reporting import status_dict
    from .store import repo

    engine = _engine(settings)
    with _reading(engine) as conn:
        job = repo.get_job(conn, job_id)
        st = status_dict(conn, job)
        if as_json:
            _print_json(st)
        else:
            from .render import summary_table

            summary_table(conn, job)
    if job["status"] in EXIT_FOR_STATUS:
        return EXIT_FOR_STATUS[job["status"]]
    return EXIT_OK if not (st["counts"]["failed"]) else EXIT_FAILED


# ---------------------------------------------------------------------------------------- commands

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmbatch")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Bulk LLM jobs on the cheapest good-enough model, under a hard budget, with a cost ledger."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if verbose < 2:  # one line per HTTP call only at -vv; the ledger records every call anyway
        logging.getLogger("httpx").setLevel(logging.WARNING)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--concurrency", type=int, help="Calls in flight (default from config: 64).")
@click.option("--local", "force_local", is_flag=True, help="Run embedded even when a broker is configured.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
def run(input_path, concurrency, force_local, as_json, **opts):
    """Submit INPUT_PATH and wait for it. Embedded executor unless a broker is configured."""
    settings = _settings()
    spec = build_spec(**opts)
    use_celery = bool(settings.broker_url) and not force_local
    job_id, report = _create(settings, input_path, spec, "celery" if use_celery else "local", as_json)
    if report.accepted:
        if use_celery:
            from .executors.celery_app import dispatch_job

            dispatch_job(settings, job_id)
            _wait(settings, job_id)
        else:
            from .jobs import run_embedded
            from .render import LiveProgress

            conc = concurrency or spec.concurrency or settings.concurrency
            with LiveProgress(report.accepted, enabled=not as_json and sys.stderr.isatty()) as progress:
                run_embedded(settings, job_id, concurrency=conc, on_progress=progress.update)
    code = _finish_output(settings, job_id, as_json)
    if report.rejected and code == EXIT_OK:  # the valid lines ran, but the input was not clean
        code = EXIT_INPUT
    sys.exit(code)


def _wait(settings: Settings, job_id: str) -> None:
    from .store import repo
    from .store.schema import JobStatus

    engine = _engine(settings)
    while True:
        with _reading(engine) as conn:
            job = repo.get_job(conn, job_id)
        if job["status"] in JobStatus.terminal:
            return
        time.sleep(0.5)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--json", "as_json", is_flag=True)
def submit(input_path, as_json, **opts):
    """Store INPUT_PATH as a job and enqueue it to Celery; prints the job id."""
    settings = _settings()
    if not settings.broker_url:
        raise click.UsageError("submit needs a broker: set LLMBATCH_BROKER_URL (e.g. redis://localhost:6379/0), "
                               "or use `llmbatch run` to run embedded")
    spec = build_spec(**opts)
    job_id, report = _create(settings, input_path, spec, "celery", as_json)
    units = 0
    if report.accepted:
        from .executors.celery_app import dispatch_job

        units = dispatch_job(settings, job_id)
    if as_json:
        _print_json({"job_id": job_id, "tasks": report.accepted, "rejected": report.rejected, "units": units})
    else:
        click.echo(job_id)
    sys.exit(EXIT_INPUT if report.rejected and not report.accepted else EXIT_OK)


@main.command()
@click.option("--concurrency", type=int, default=200, show_default=True, help="Calls in flight in this process.")
@click.option("--simulate", is_flag=True, help="Treat every job as simulated (never call a paid API).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency, simulate, loglevel):
    """Start a Celery worker for the configured broker."""
    settings = _settings()
    if not settings.broker_url:
        raise click.UsageError("worker needs LLMBATCH_BROKER_URL (e.g. redis://localhost:6379/0)")
    _engine(settings)  # migrate and fail fast on a bad store URL
    if settings.metrics_port:
        from .service import check_installed
        from .service.metrics import serve_worker_metrics

        check_installed()
        serve_worker_metrics(settings)
    from .executors.celery_app import start_worker

    start_worker(concurrency=concurrency, force_simulate=simulate, loglevel=loglevel)


def _resolve_job(conn, job_id: str | None) -> dict:
    from .store import repo

    job_id = job_id or repo.latest_job_id(conn)
    job = repo.get_job(conn, job_id) if job_id else None
    if job is None:
        _err(f"no job {job_id!r} in this store" if job_id else "no jobs in this store yet")
        sys.exit(EXIT_INPUT)
    return job


@main.command()
@click.argument("job_id", required=False)
@click.option("--watch", is_flag=True, help="Live progress bar until the job ends.")
@click.option("--errors", "show_errors", is_flag=True, help="List the input lines that were rejected.")
@click.option("--json", "as_json", is_flag=True)
def status(job_id, watch, show_errors, as_json):
    """Progress of JOB (default: the newest job)."""
    from .reporting import status_dict
    from .store import repo
    from .store.schema import JobStatus

    settings = _settings()
    engine = _engine(settings)
    with _reading(engine) as conn:
        job = _resolve_job(conn, job_id)
    if watch and not as_json:
        from .render import watch_status

        watch_status(engine, job["id"])
    with _reading(engine) as conn:
        job = repo.get_job(conn, job["id"])
        st = status_dict(conn, job)
        errors = repo.input_error_rows(conn, job["id"]) if show_errors else []
    if as_json:
        if show_errors:
            st["input_errors"] = [{"line": e["line_no"], "reason": e["reason"]} for e in errors]
        _print_json(st)
    else:
        c = st["counts"]
        click.echo(f"{st['job_id']}  {st['status']}  total={c['total']} queued={c['queued']} running={c['running']} "
                   f"succeeded={c['succeeded']} failed={c['failed']} skipped={c['skipped']} cancelled={c['cancelled']}  "
                   f"spent=${st['spent_usd']:.6f}" + (f" of ${st['budget_usd']:.2f}" if st['budget_usd'] is not None else ""))
        for e in errors:
            click.echo(e["reason"])
    if job["status"] in JobStatus.terminal:
        sys.exit(EXIT_FOR_STATUS.get(job["status"], EXIT_OK))


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file (default stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "openai"]), default="jsonl", show_default=True)
def results(job_id, output, fmt):
    """One line per task of JOB, in input order."""
    from .reporting import openai_batch_line, result_lines

    settings = _settings()
    engine = _engine(settings)
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        with _reading(engine) as conn:
            job = _resolve_job(conn, job_id)
            lines = result_lines(conn, job["id"])
            if fmt == "csv":
                w = csv.writer(out)
                w.writerow(["id", "status", "provider", "model", "output", "error", "input_tokens", "cached_tokens",
                            "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_usd", "attempts"])
                for r in lines:
                    o = r["output"]
                    w.writerow([r["id"], r["status"], r["provider"], r["model"],
                                o if isinstance(o, str) or o is None else orjson.dumps(o).decode(), r["error"],
                                *r["usage"].values(), f"{r['cost_usd']:.6f}", r["attempts"]])
            else:
                for seq, r in enumerate(lines):
                    obj = openai_batch_line(r, job["id"], seq) if fmt == "openai" else r
                    out.write(orjson.dumps(obj).decode() + "\n")
    finally:
        if output:
            out.close()


@main.command()
@click.argument("job_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True, help="The by-model table as CSV.")
@click.option("--attempts", "show_attempts", is_flag=True, help="Every ledger row (JSON lines), for audit.")
@click.option("--baseline", help="Reference model for savings (default from config: gpt-4o).")
def report(job_id, as_json, as_csv, show_attempts, baseline):
    """The spend audit of JOB: totals, by model, escalations, skips, baseline and savings."""
    from .catalog.loading import load_catalog
    from .reporting import attempt_lines, build_report

    settings = _settings()
    engine = _engine(settings)
    with _reading(engine) as conn:
        job = _resolve_job(conn, job_id)
        if show_attempts:
            for a in attempt_lines(conn, job["id"]):
                click.echo(orjson.dumps(a, default=str).decode())
            return
        rep = build_report(conn, job["id"], load_catalog(settings), baseline_model=baseline or settings.baseline_model)
    if as_json:
        _print_json(rep)
    elif as_csv:
        w = csv.writer(sys.stdout)
        cols = ["provider", "model", "tasks", "attempts", "input_tokens", "cached_tokens", "cache_write_tokens",
                "output_tokens", "reasoning_tokens", "cost_usd"]
        w.writerow(cols)
        for r in rep["by_model"]:
            w.writerow([r[c] if c != "cost_usd" else f"{r[c]:.6f}" for c in cols])
    else:
        from .render import report_tables

        report_tables(rep)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--json", "as_json", is_flag=True)
def estimate(input_path, as_json, **opts):
    """The cost of INPUT_PATH before running: expected, and the upper bound reservations will hold. No calls."""
    from .planning import plan_file

    settings = _settings()
    spec = build_spec(**opts)
    plan = plan_file(settings, input_path, spec)
    if as_json:
        _print_json(plan.estimate_dict())
    else:
        from .render import estimate_table

        estimate_table(plan)
    _plan_line_errors(input_path, plan)
    if plan.over_budget:
        _err(f"the upper bound {exact_usd(plan.upper_bound_micros)} exceeds the budget ${spec.budget_usd}: "
             f"some tasks may end skipped (budget); raise --budget or lower max_output_tokens")


@main.command("route")
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--explain", is_flag=True, help="Show why each cheaper model was not eligible.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=int, default=50, show_default=True, help="Tasks to show (table output).")
def route_cmd(input_path, explain, as_json, limit, **opts):
    """Which model each task of INPUT_PATH would get, and why."""
    from .planning import plan_file, route_item

    settings = _settings()
    spec = build_spec(**opts)
    if as_json:
        # One JSON array, written as the file is routed: memory stays flat on a million lines.
        first = True

        def emit(task, decision):
            nonlocal first
            item = orjson.dumps(route_item(task, decision, explain=explain), option=orjson.OPT_INDENT_2,
                                default=str).decode()
            click.echo(("[\n" if first else ",\n") + "  " + item.replace("\n", "\n  "), nl=False)
            first = False

        plan = plan_file(settings, input_path, spec, on_decision=emit)
        click.echo("[]" if first else "\n]")
        _plan_line_errors(input_path, plan)
        return
    from .render import route_table

    shown: list[dict] = []
    total = 0

    def keep(task, decision):
        nonlocal total
        total += 1
        if len(shown) < limit:  # the table shows the first `limit` tasks; the rest are only counted
            shown.append(route_item(task, decision, explain=explain))

    plan = plan_file(settings, input_path, spec, on_decision=keep)
    route_table(shown, total=total, explain=explain)
    _plan_line_errors(input_path, plan)


def _plan_line_errors(input_path, plan) -> None:
    """estimate and route: the lines that were not planned."""
    _show_line_errors(input_path, plan.errors, plan.invalid_lines,
                      summary=f"{plan.invalid_lines} line(s) invalid and not planned; {plan.tasks} planned")


def _show_line_errors(input_path, errors, count: int, *, summary: str, more: str = "") -> None:
    """Bad input lines on stderr (stdout stays parseable): the first MAX_ERRORS_SHOWN, how many more, a summary."""
    for le in errors[:MAX_ERRORS_SHOWN]:
        _err(f"{input_path}: {le.reason}")
    if count > MAX_ERRORS_SHOWN:
        _err(f"... and {count - MAX_ERRORS_SHOWN} more bad lines{more}")
    if count:
        _err(summary)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """The model catalog with prices (USD per 1M tokens)."""
    from .catalog.loading import load_catalog

    cat = load_catalog(_settings())
    rows = sorted((m.public_dict() for m in cat), key=lambda d: (d["provider"], d["input_per_mtok"]))
    if as_json:
        _print_json(rows)
    else:
        from .render import models_table

        models_table(rows)


@main.command()
@click.argument("job_id")
def cancel(job_id):
    """Stop JOB: queued tasks are cancelled now; running ones stop before their next call."""
    from .store import repo

    settings = _settings()
    engine = _engine(settings)
    with engine.begin() as conn:
        job = _resolve_job(conn, job_id)
        n = repo.request_cancel(conn, job["id"])
        repo.finish_job_if_done(conn, job["id"])
    click.echo(f"{job['id']}: cancel requested; {n} queued task(s) cancelled")


@main.command()
@click.argument("job_id")
@click.option("--budget", help="A new (larger) budget in USD for the job.")
@click.option("--skipped-only", is_flag=True, help="Requeue skipped and cancelled tasks, not failed ones.")
@click.option("--wait/--no-wait", default=True, help="Embedded: run now and wait (default).")
@click.option("--simulate", is_flag=True, help="Embedded: force the simulator.")
@click.option("--concurrency", type=int)
@click.option("--json", "as_json", is_flag=True)
def retry(job_id, budget, skipped_only, wait, simulate, concurrency, as_json):
    """Requeue JOB's failed and skipped tasks (optionally with a larger --budget) and run them."""
    from .money import usd_to_micros
    from .store import repo

    settings = _settings()
    engine = _engine(settings)
    with engine.begin() as conn:
        job = _resolve_job(conn, job_id)
        n = repo.requeue_for_retry(conn, job["id"], budget_micros=usd_to_micros(budget) if budget else None,
                                   include_failed=not skipped_only)
    if not as_json:
        click.echo(f"{job['id']}: {n} task(s) requeued", err=True)
    if n == 0:
        with engine.begin() as conn:
            repo.finish_job_if_done(conn, job["id"])
    elif settings.broker_url and job["executor"] == "celery":
        from .executors.celery_app import dispatch_job

        dispatch_job(settings, job["id"])
        if not wait:
            return
        _wait(settings, job["id"])
    elif wait:
        from .jobs import run_embedded

        run_embedded(settings, job["id"], concurrency=concurrency or settings.concurrency, force_simulate=simulate)
    sys.exit(_finish_output(settings, job["id"], as_json))


@main.command()
@click.argument("job_id", required=False)
@click.option("--assume", type=click.Choice(["billed", "unbilled"]), default="billed", show_default=True,
              help="billed: charge the reserved upper bound (the cap stays true against the invoice); unbilled: release it.")
@click.option("--grace", type=float, default=0.0, help="Only attempts unknown for at least this many seconds.")
def reconcile(job_id, assume, grace):
    """Settle attempts whose outcome is unknown (worker died mid-call, timeout after send)."""
    from .store import ledger

    settings = _settings()
    done = ledger.reconcile(_engine(settings), job_id=job_id, assume=assume, grace_s=grace)
    click.echo(f"reconciled {len(done)} attempt(s) as {assume}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--latency", type=float, default=0.0, show_default=True, help="Mean seconds per response.")
@click.option("--latency-jitter", type=float, default=0.0, show_default=True)
@click.option("--error-rate", type=float, default=0.0, show_default=True, help="Fraction answered 429 or 5xx.")
@click.option("--rpm", type=int, default=None, help="Requests per minute per model before 429.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fault", "faults", multiple=True, help="NAME=RATE, e.g. hang=0.01 (storm429, burst5xx, hang, reset, malformed, truncated, slow_body).")
def simulator(host, port, latency, latency_jitter, error_rate, rpm, seed, faults):
    """Run the bundled provider simulator (OpenAI, Anthropic and Gemini APIs) on loopback."""
    from .simulator import SimulatorConfig, run_server

    fault_rates = {}
    for f in faults:
        name, _, rate = f.partition("=")
        try:
            fault_rates[name] = float(rate)
        except ValueError:
            raise click.UsageError(f"--fault {f!r}: expected NAME=RATE") from None
    try:
        cfg = SimulatorConfig(latency_s=latency, latency_jitter_s=latency_jitter, error_rate=error_rate, rpm=rpm,
                              seed=seed, faults=fault_rates)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    run_server(host, port, cfg)


@main.group()
def db():
    """Store administration."""


@db.command("upgrade")
def db_upgrade():
    """Apply pending migrations (also done automatically on first use)."""
    from .store.db import current_revision, get_engine, redact_url

    settings = _settings()
    engine = get_engine(settings.database_url)
    click.echo(f"{redact_url(settings.database_url)} at revision {current_revision(engine)}")


@main.group()
def catalog():
    """Model catalog tools."""


@catalog.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="llmbatch.catalog.json", show_default=True)
@click.option("--provider", "providers", multiple=True, help="Only these providers (repeatable).")
def catalog_import(file, output, providers):
    """Read LiteLLM's model_prices_and_context_window.json into a catalog file (set catalog_file to use it)."""
    from .catalog.litellm_import import import_litellm

    doc = import_litellm(file, providers=set(providers) or None)
    Path(output).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    click.echo(f"wrote {len(doc['models'])} models to {output}; set catalog_file = \"{output}\" in llmbatch.toml "
               f"or LLMBATCH_CATALOG_FILE to use it")


# ------------------------------------------------------------------------------ service (llmbatch serve)

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback only "
              "until an API token exists).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--simulate", is_flag=True, help="Run every batch against the bundled simulator (no paid calls).")
def serve(host, port, simulate):
    """The HTTP service: OpenAI-compatible Files/Batches API, the spend dashboard and /metrics."""
    from .service import bind_host, check_installed, serve as run_service

    settings = _settings()
    check_installed()
    _engine(settings)
    host, notice = bind_host(settings, host)
    if notice:
        _err(notice)
    click.echo(f"llmbatch serve: http://{host}:{port}/v1 (dashboard /dashboard, metrics /metrics)", err=True)
    run_service(settings, host=host, port=port, simulate=simulate)


@main.group()
def tokens():
    """API tokens of `llmbatch serve` (each sees only its own files, batches and jobs)."""


@tokens.command("create")
@click.argument("name")
@click.option("--daily-cap", help="Most this token may spend per UTC day, in USD (held like a job budget).")
def tokens_create(name, daily_cap):
    """Create token NAME and print its secret (shown once)."""
    from .service.tokens import create_token, parse_cap

    settings = _settings()
    secret = create_token(_engine(settings), name, daily_cap_micros=parse_cap(daily_cap))
    click.echo(secret)
    _err(f"token {name!r} created; keep the secret above, it is stored hashed and cannot be shown again")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
def tokens_list(as_json):
    """The tokens: name, daily cap, created, revoked (never the secrets)."""
    from .service.tokens import list_tokens

    rows = list_tokens(_engine(_settings()))
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        cap = "no cap" if r["daily_cap_usd"] is None else f"cap ${r['daily_cap_usd']}/day"
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_at"]))
        state = "revoked" if r["revoked"] else "active"
        click.echo(f"{r['name']}\t{r['id']}\t{cap}\tcreated {when}\t{state}")


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name):
    """Revoke token NAME: its requests answer 401 from now on."""
    from .service.tokens import revoke_token

    revoke_token(_engine(_settings()), name)
    _err(f"token {name!r} revoked")


def entrypoint() -> None:
    try:
        main(standalone_mode=True)
    except LLMBatchError as e:
        _err(str(e))
        sys.exit(EXIT_INPUT)


if __name__ == "__main__":
    entrypoint()
