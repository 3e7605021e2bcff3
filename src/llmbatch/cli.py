"""The `llmbatch` command: thin click commands over the library (the job lifecycle lives in llmbatch.jobs; this
module parses and prints). Exit codes (DESIGN.md): 0 ok; 2 usage, input, configuration, store or broker error;
3 the job finished with failed tasks; 4 the job stopped on its budget cap; 5 cancelled; 130 interrupted (resumable)."""

from __future__ import annotations

import csv
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from . import __version__
from .config import Settings, load_settings
from .errors import InputError, LLMBatchError
from .money import dumps_json, exact_usd
from .terminal_text import printable

if TYPE_CHECKING:  # pydantic models cost ~100 ms to import: only the commands that build a job load them
    from .models import JobSpec

EXIT_OK, EXIT_INPUT, EXIT_FAILED, EXIT_BUDGET, EXIT_CANCELLED, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 130
EXIT_FOR_STATUS = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "budget_exhausted": EXIT_BUDGET,
                   "cancelled": EXIT_CANCELLED, "interrupted": EXIT_INTERRUPTED}
FINAL = ("succeeded", "failed", "budget_exhausted", "cancelled")  # a job in one of these has nothing left to run
JOB_STATUSES = ("queued", "running", "interrupted", *FINAL)
_debug = False  # --debug: let errors show their traceback
MAX_ERRORS_SHOWN = 20


def _err(msg: str) -> None:
    click.echo(f"llmbatch: {printable(msg)}", err=True)


def _print_json(obj) -> None:
    click.echo(dumps_json(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def _settings(**overrides) -> Settings:
    return load_settings(**overrides)  # a ConfigError becomes one line and exit 2 (entrypoint)


def _job(job_id: str | None, name: str | None = None) -> dict:
    """The job addressed by id (or name) or --name; the newest with neither. JobNotFound names the store."""
    from . import jobs

    return jobs.find_job(_settings(), job_id, name=name)


def name_option(f):
    return click.option("--name", "by_name", help="Address the job by its name instead of its id.")(f)


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
        click.option("--max-output-tokens", type=click.IntRange(min=1), help="Default output cap per task."),
        click.option("--simulate", is_flag=True, help="Send every call to the bundled simulator (no API keys, no cost)."),
        click.option("--no-escalate", is_flag=True, help="Do not escalate to a higher tier when output fails validation."),
        click.option("--strict", is_flag=True, help="Refuse the whole file on the first bad line (exit 2, nothing written)."),
        click.option("--name", help="A name for the job (commands accept it in place of the id)."),
        click.option("--new", "new", is_flag=True,
                     help="Start a fresh job even if this file already ran with these options (default: resume it)."),
        click.option("--no-cache", is_flag=True, help="Do not answer tasks from earlier identical calls (pay again)."),
        click.option("--channel", type=click.Choice(["auto", "online", "flex", "batch"]),
                     help="How calls are sent: online, flex (OpenAI flex tier), batch (provider batch APIs, ~50% off) "
                          "or auto (default: the cheapest that meets --deadline)."),
        click.option("--deadline", help="When the job must be done, from submit: 90s, 30m, 24h (default: as soon as possible)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _comma_list(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def build_spec(spec_path, task, labels, schema_path, budget, max_cost_per_task, min_tier, allow, deny, pin,
               max_output_tokens, simulate, no_escalate, strict, name, new=False, no_cache=False, channel=None,
               deadline=None) -> JobSpec:
    from pydantic import ValidationError

    from .models import JobSpec
    from .specfile import load_schema_file, load_spec_file

    # Bounded reads: size and YAML alias limits (specfile.py); a problem is an InputError (one line, exit 2).
    limits = _settings().input_limits
    data = load_spec_file(spec_path, limits) if spec_path else {}
    schema = load_schema_file(schema_path, limits) if schema_path else None
    flags = {
        "task": task, "name": name, "min_tier": min_tier, "model": pin, "max_output_tokens": max_output_tokens,
        "labels": _comma_list(labels), "models": _comma_list(allow), "deny": _comma_list(deny),
        "budget_usd": budget, "max_cost_per_task_usd": max_cost_per_task, "schema": schema,
        "channel": channel, "deadline": deadline,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if simulate:
        data["simulate"] = True
    if no_escalate:
        data["escalate"] = False
    if strict:
        data["strict"] = True
    if no_cache:
        data["cache"] = False
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        flag = {"budget_usd": "--budget", "max_cost_per_task_usd": "--max-cost-per-task"}.get(where, where)
        from_file = spec_path and flags.get(where) is None
        src = f"{spec_path}: {where}" if from_file else (flag if flag != where else f"job spec: {where}")
        raise InputError(f"{src}: {first['msg'].removeprefix('Value error, ')}") from None


def _create(settings: Settings, input_path: str, spec: JobSpec, executor: str, as_json: bool):
    from .jobs import create_job

    try:
        job_id, report = create_job(settings, input_path, spec, executor=executor, strict=spec.strict)
    except InputError as e:
        _err(f"{input_path}: {e}")
        if spec.strict:
            _err("nothing was written (--strict); fix the line or drop --strict to run the valid lines")
        sys.exit(EXIT_INPUT)
    _show_line_errors(input_path, report.errors, report.rejected,
                      more=f"; `llmbatch status {job_id} --errors` lists them",
                      summary=f"{report.rejected} line(s) rejected, {report.accepted} accepted; the accepted lines run")
    if not as_json:
        click.echo(f"job {job_id}: {report.accepted} tasks", err=True)
    return job_id, report


def _job_for_command(settings: Settings, input_path: str, spec: JobSpec, *, executor: str, new: bool,
                     as_json: bool) -> tuple[dict, int, bool]:
    """run/submit: the job this command runs. The same file with the same options resumes the job made from it
    (or reports it, if it finished); --new, or a first run, creates one. Returns (job row, lines rejected,
    finished already)."""
    from . import jobs

    if not new:
        job = jobs.find_same_command(settings, input_path, spec)
        if job is not None:
            if job["status"] in FINAL:
                _err(f"job {job['id']} already ran {input_path} with these options and ended {job['status']}; "
                     f"its summary follows (--new runs the file again as a new job)")
                return job, job["invalid_lines"], True
            plan = jobs.prepare_resume(settings, job["id"])
            _err(f"resuming job {job['id']}: {plan.done:,} of {plan.done + plan.left:,} done (--new starts a fresh job)")
            return jobs.find_job(settings, job["id"]), job["invalid_lines"], False
    job_id, report = _create(settings, input_path, spec, executor, as_json)
    return jobs.find_job(settings, job_id), report.rejected, False


def _run_job(settings: Settings, job: dict, *, concurrency: int | None, as_json: bool, wait: bool = True,
             simulate: bool = False) -> int:
    """Dispatch the job with its executor, wait, print the end: the exit code."""
    from . import jobs

    done, left = jobs.done_and_left(settings, job["id"])
    if left:
        from .render import LiveProgress

        with LiveProgress(done + left, done=done, enabled=not as_json and sys.stderr.isatty()) as progress:
            outcome = jobs.dispatch(settings, job, concurrency=concurrency, wait=wait, force_simulate=simulate,
                                    on_progress=progress.update, on_notice=_err)
        if outcome.interrupted and outcome.status is None:  # stopped waiting on Celery workers
            sys.exit(EXIT_INTERRUPTED)
        if outcome.interrupted:
            if as_json:
                _print_json(jobs.status(settings, job["id"]))
            _err(f"interrupted: {outcome.done:,} done, {outcome.left:,} left — resume with: llmbatch resume {job['id']}")
            sys.exit(EXIT_INTERRUPTED)
        if not wait:
            if not as_json:
                _err(f"{job['id']}: {outcome.left:,} task(s) wait; run them with: llmbatch resume {job['id']}"
                     if job["executor"] == "local" else f"{job['id']}: dispatched")
            return EXIT_OK
    return _finish_output(settings, job["id"], as_json)


def _finish_output(settings: Settings, job_id: str, as_json: bool) -> int:
    from . import jobs

    summary = jobs.summary(settings, job_id)
    if as_json:
        _print_json({k: summary[k] for k in ("job_id", "status", "counts", "spent_usd", "reserved_usd", "budget_usd",
                                              "invalid_lines")})
    else:
        from .render import summary_table

        summary_table(summary)
    if summary["status"] in EXIT_FOR_STATUS:
        return EXIT_FOR_STATUS[summary["status"]]
    return EXIT_OK if not (summary["counts"]["failed"]) else EXIT_FAILED


# ---------------------------------------------------------------------------------------- commands

def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llmbatch")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (normally one line).")
def main(verbose: int, debug: bool) -> None:
    """Bulk LLM jobs on the cheapest good-enough model, under a hard budget, with a cost ledger."""
    global _debug
    _debug = debug
    # SIGTERM before (or after) a run's own handlers: like Ctrl-C, one line and exit 130, not a silent kill.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if verbose < 2:  # one line per HTTP call only at -vv; the ledger records every call anyway
        logging.getLogger("httpx").setLevel(logging.WARNING)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight (default from config: 64).")
@click.option("--local", "force_local", is_flag=True, help="Run embedded even when a broker is configured.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False),
              help="Route by a quality policy written by `llmbatch calibrate`.")
@click.option("--quality", type=float, help="Calibrate on a sample first (inside --budget), then route by the "
                                            "measured policy: agreement with the reference >= this (e.g. 0.95).")
def run(input_path, concurrency, force_local, as_json, new, policy_path, quality, **opts):
    """Submit INPUT_PATH and wait for it. Embedded executor unless a broker is configured. Running the same file
    with the same options again resumes its job (--new starts a fresh one)."""
    from . import jobs

    settings = _settings()
    spec = build_spec(**opts)
    if policy_path or quality is not None:
        spec = _quality_spec(settings, input_path, spec, policy_path, quality,
                             concurrency or spec.concurrency or settings.concurrency, as_json)
    executor = jobs.choose_executor(settings, force_local=force_local)
    if executor == jobs.CELERY:
        jobs.check_broker(settings)  # before anything is stored
    job, rejected, finished = _job_for_command(settings, input_path, spec, executor=executor, new=new,
                                               as_json=as_json)
    if finished:
        code = _finish_output(settings, job["id"], as_json)
    else:
        code = _run_job(settings, job, concurrency=concurrency or spec.concurrency, as_json=as_json)
    if rejected and (code == EXIT_OK or not job["total_tasks"]):  # the input was not clean (or had no valid line)
        code = EXIT_INPUT
    sys.exit(code)


def _calibrate(settings: Settings, input_path: str, spec: JobSpec, concurrency: int, **options):
    """Plan (shown on stderr before anything is spent), then run the calibration; exit 2 on bad input."""
    from .quality import calibrate as cal
    from .quality.report import plan_lines

    try:
        plan = cal.plan(settings, input_path, spec, cal.Options(budget_usd=spec.budget_usd, **options))
        for line in plan_lines(plan):
            click.echo(line, err=True)
        return cal.execute(settings, plan, spec, input_path=input_path, concurrency=concurrency)
    except InputError as e:
        _err(str(e))
        sys.exit(EXIT_INPUT)


def _quality_spec(settings: Settings, input_path: str, spec: JobSpec, policy_path, quality, concurrency: int,
                  as_json: bool) -> JobSpec:
    """run --policy / --quality: the job spec with its policy (calibrating first for --quality)."""
    from .quality import calibrate, policy
    from .quality.report import calibration_lines

    if policy_path and quality is not None:
        raise click.UsageError("give --policy or --quality, not both")
    if policy_path:
        try:
            return spec.model_copy(update={"policy": policy.load(policy_path)})
        except InputError as e:
            _err(str(e))
            sys.exit(EXIT_INPUT)
    result = _calibrate(settings, input_path, spec, concurrency, target=quality)
    if not as_json:
        for line in calibration_lines(result.policy):
            click.echo(line, err=True)
    return calibrate.spec_with_policy(spec, result)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--target", type=float, default=0.95, show_default=True,
              help="Agreement with the reference that the policy must guarantee.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Confidence of that guarantee.")
@click.option("--sample", type=int, help="Sampled lines per task group (default: sized so the bound can be met).")
@click.option("--reference", help="Reference model (default: the cheapest of the highest tier that can take the tasks).")
@click.option("--candidates", type=int, default=4, show_default=True, help="Cheaper models measured per group.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
@click.option("--concurrency", type=int, help="Calls in flight (default from config).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Write the policy here.")
@click.option("--json", "as_json", is_flag=True, help="Print the policy as JSON too.")
def calibrate(input_path, target, confidence, sample, reference, candidates, seed, concurrency, output, as_json,
              **opts):
    """Measure which cheaper models agree with a reference on a sample of INPUT_PATH; write a policy.
    --budget is the calibration's hard cap."""
    from .quality.report import calibration_lines

    settings = _settings()
    spec = build_spec(**opts)
    result = _calibrate(settings, input_path, spec, concurrency or spec.concurrency or settings.concurrency,
                        target=target, confidence=confidence, sample=sample, reference=reference,
                        candidates=candidates, seed=seed)
    Path(output).write_bytes(dumps_json(result.policy, option=orjson.OPT_INDENT_2))
    for line in calibration_lines(result.policy):
        click.echo(line)
    if as_json:
        _print_json(result.policy)
    click.echo(f"policy written to {output}; use it with `llmbatch run FILE --policy {output}`", err=True)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--json", "as_json", is_flag=True)
def submit(input_path, as_json, new, **opts):
    """Store INPUT_PATH as a job and enqueue it to Celery; prints the job id. The same file with the same options
    again re-enqueues its unfinished job (--new starts a fresh one)."""
    from . import jobs

    settings = _settings()
    if not settings.broker_url:
        raise InputError("submit needs a broker: set LLMBATCH_BROKER_URL (e.g. redis://localhost:6379/0), "
                         "or use `llmbatch run` to run embedded")
    spec = build_spec(**opts)
    jobs.check_broker(settings)  # before anything is stored
    job, rejected, finished = _job_for_command(settings, input_path, spec, executor=jobs.CELERY, new=new,
                                               as_json=as_json)
    units = 0
    code = EXIT_INPUT if rejected and not job["total_tasks"] else EXIT_OK
    if finished:
        code = EXIT_FOR_STATUS.get(job["status"], EXIT_OK)
    elif job["total_tasks"]:
        if job["executor"] != jobs.CELERY:
            raise InputError(f"job {job['id']} runs embedded; resume it with `llmbatch resume {job['id']}` "
                             f"(or submit with --new)")
        from .executors.celery_app import dispatch_job

        units = dispatch_job(settings, job["id"])
    if as_json:
        _print_json({"job_id": job["id"], "tasks": job["total_tasks"], "rejected": rejected, "units": units})
    else:
        click.echo(job["id"])
    sys.exit(code)


@main.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight in this process (default from config).")
@click.option("--simulate", is_flag=True, help="Treat every job as simulated (never call a paid API).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency, simulate, loglevel):
    """Start a Celery worker for the configured broker."""
    from . import jobs

    settings = _settings()
    if not settings.broker_url:
        raise InputError("worker needs LLMBATCH_BROKER_URL (e.g. redis://localhost:6379/0)")
    jobs.store(settings)  # migrate and fail fast on a bad store URL
    if settings.metrics_port:
        from .service import check_installed
        from .service.metrics import serve_worker_metrics

        check_installed()
        serve_worker_metrics(settings)
    from .executors.celery_app import start_worker

    start_worker(concurrency=concurrency or settings.concurrency, force_simulate=simulate, loglevel=loglevel)


@main.command("jobs")
@click.option("--status", "status_", type=click.Choice(JOB_STATUSES), help="Only jobs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_cmd(status_, limit, as_json):
    """List jobs, newest first: id, name, created, status, counts, spent, budget."""
    from . import jobs

    settings = _settings()
    rows = jobs.list_jobs(settings, status=status_, limit=limit)
    if as_json:
        _print_json(rows)
    else:
        from .render import jobs_table

        jobs_table(rows, store=jobs.store_label(settings))


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight (embedded).")
@click.option("--simulate", is_flag=True, help="Embedded: force the simulator.")
@click.option("--json", "as_json", is_flag=True)
def resume(job_id, by_name, concurrency, simulate, as_json):
    """Run every unfinished task of an interrupted or stalled JOB (default: the newest job). Unknown outcomes are
    reconciled first; tasks of a dead process on this host are taken back at once."""
    from . import jobs

    settings = _settings()
    job = _job(job_id, by_name)
    if job["status"] in FINAL:
        hint = {"cancelled": "`llmbatch retry JOB` requeues its cancelled tasks",
                "succeeded": "nothing is left to run"}.get(job["status"], "`llmbatch retry JOB` requeues failed or "
                                                                          "skipped tasks (--budget USD raises the cap)")
        _err(f"job {job['id']} already ended {job['status']}: {hint}")
        sys.exit(_finish_output(settings, job["id"], as_json))
    if job["executor"] == jobs.CELERY and settings.broker_url:
        jobs.check_broker(settings)  # before anything changes in the store
    plan = jobs.prepare_resume(settings, job["id"])
    extra = [f"took back {plan.taken_back} task(s) of a stopped process"] if plan.taken_back else []
    extra += [f"reconciled {plan.reconciled} call(s) of unknown outcome"] if plan.reconciled else []
    _err(f"resuming job {job['id']}: {plan.done:,} of {plan.done + plan.left:,} done"
         + (f" ({'; '.join(extra)})" if extra else ""))
    sys.exit(_run_job(settings, jobs.find_job(settings, job["id"]), concurrency=concurrency, as_json=as_json,
                      simulate=simulate))


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--watch", is_flag=True, help="Live progress bar until the job ends.")
@click.option("--errors", "show_errors", is_flag=True, help="List the input lines that were rejected.")
@click.option("--json", "as_json", is_flag=True)
def status(job_id, by_name, watch, show_errors, as_json):
    """Progress of JOB (default: the newest job)."""
    from . import jobs

    settings = _settings()
    job = _job(job_id, by_name)
    if watch and not as_json:
        from .render import WatchProgress

        with WatchProgress() as w:
            jobs.wait_for(settings, job["id"], on_update=w.update)
    st = jobs.status(settings, job["id"])
    errors = jobs.input_errors(settings, job["id"]) if show_errors else []
    if as_json:
        if show_errors:
            st["input_errors"] = [{"line": e["line_no"], "reason": e["reason"]} for e in errors]
        _print_json(st)
    else:
        c = st["counts"]
        click.echo(f"{st['job_id']}  {st['status']}  total={c['total']} queued={c['queued']} running={c['running']} "
                   f"succeeded={c['succeeded']} failed={c['failed']} skipped={c['skipped']} cancelled={c['cancelled']}  "
                   f"spent=${st['spent_usd']:.6f}" + (f" of ${st['budget_usd']:.2f}" if st['budget_usd'] is not None else ""))
        if st["status"] == "interrupted":
            click.echo(f"interrupted with {c['queued'] + c['running']:,} task(s) left — resume with: "
                       f"llmbatch resume {st['job_id']}")
        for e in errors:
            click.echo(printable(e["reason"]))
    if st["status"] in FINAL:
        sys.exit(EXIT_FOR_STATUS.get(st["status"], EXIT_OK))


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file (default stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "openai"]), default="jsonl", show_default=True)
def results(job_id, by_name, output, fmt):
    """One line per task of JOB, in input order."""
    from . import jobs
    from .reporting import openai_batch_line, openai_rejected_line

    settings = _settings()
    job = _job(job_id, by_name)
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        lines = jobs.result_lines(settings, job["id"], with_final_attempt=fmt == "openai")
        if fmt == "csv":
            w = csv.writer(out)
            w.writerow(["id", "status", "provider", "model", "output", "error", "input_tokens", "cached_tokens",
                        "cache_write_tokens", "output_tokens", "reasoning_tokens", "cost_usd", "attempts"])
            for r in lines:
                o = r["output"]
                w.writerow([r["id"], r["status"], r["provider"], r["model"],
                            o if isinstance(o, str) or o is None else orjson.dumps(o).decode(), r["error"],
                            *r["usage"].values(), r["cost_usd"], r["attempts"]])
        else:
            for seq, r in enumerate(lines):
                obj = openai_batch_line(r, job["id"], seq) if fmt == "openai" else r
                out.write(dumps_json(obj).decode() + "\n")
            if fmt == "openai":  # rejected input lines too, as error lines with their custom_id
                for e in jobs.rejected_lines(settings, job["id"]):
                    out.write(dumps_json(openai_rejected_line(e, job["id"])).decode() + "\n")
    finally:
        if output:
            out.close()


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True, help="The by-model table as CSV.")
@click.option("--attempts", "show_attempts", is_flag=True, help="Every ledger row (JSON lines), for audit.")
@click.option("--baseline", help="Reference model for savings (default from config: gpt-4o).")
def report(job_id, by_name, as_json, as_csv, show_attempts, baseline):
    """The spend audit of JOB: totals, by model, escalations, skips, baseline and savings."""
    from . import jobs

    settings = _settings()
    job = _job(job_id, by_name)
    if show_attempts:
        for a in jobs.attempt_lines(settings, job["id"]):
            click.echo(dumps_json(a).decode())
        return
    rep = jobs.report(settings, job["id"], baseline_model=baseline)
    if as_json:
        _print_json(rep)
    elif as_csv:
        w = csv.writer(sys.stdout)
        cols = ["provider", "model", "tasks", "attempts", "input_tokens", "cached_tokens", "cache_write_tokens",
                "output_tokens", "reasoning_tokens", "cost_usd"]
        w.writerow(cols)
        for r in rep["by_model"]:
            w.writerow([r[c] for c in cols])  # cost_usd: the exact Decimal
    else:
        from .render import report_tables

        report_tables(rep)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--json", "as_json", is_flag=True)
def estimate(input_path, as_json, new, **opts):
    """The cost of INPUT_PATH before running: expected, and the upper bound reservations will hold. No calls."""
    from .planning import plan_file

    settings = _settings()
    spec = build_spec(**opts)
    plan = plan_file(settings, input_path, spec)
    _keys_assumed(plan)
    if as_json:
        _print_json(plan.estimate_dict())
    else:
        from .render import estimate_table

        estimate_table(plan)
        click.echo("by channel: " + ", ".join(f"{c['channel']} ${c['estimated_usd'] or 0:.6f} ({c['tasks']} tasks)"
                                              for c in plan.by_channel))
    _plan_line_errors(input_path, plan)
    if plan.over_budget:
        _err(f"the upper bound {exact_usd(plan.upper_bound_picos)} exceeds the budget ${spec.budget_usd}: "
             f"some tasks may end skipped (budget); raise --budget or lower max_output_tokens")


@main.command("route")
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--explain", is_flag=True, help="Show why each cheaper model was not eligible.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=int, default=50, show_default=True, help="Tasks to show (table output).")
def route_cmd(input_path, explain, as_json, limit, new, **opts):
    """Which model each task of INPUT_PATH would get, and why."""
    from .planning import plan_file, route_item

    settings = _settings()
    spec = build_spec(**opts)
    if as_json:
        # One JSON array, written as the file is routed: memory stays flat on a million lines.
        first = True

        def emit(task, decision):
            nonlocal first
            item = dumps_json(route_item(task, decision, explain=explain), option=orjson.OPT_INDENT_2).decode()
            click.echo(("[\n" if first else ",\n") + "  " + item.replace("\n", "\n  "), nl=False)
            first = False

        plan = plan_file(settings, input_path, spec, on_decision=emit)
        click.echo("[]" if first else "\n]")
        _keys_assumed(plan)
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
    _keys_assumed(plan)
    _plan_line_errors(input_path, plan)


def _keys_assumed(plan) -> None:
    if plan.keys_assumed:
        _err("no provider API key is set: every model was priced as if its provider were configured "
             "(set OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, ... to plan for what can run here, "
             "or use --simulate)")


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
@click.argument("job_id", required=False)
@name_option
def cancel(job_id, by_name):
    """Stop JOB: queued tasks are cancelled now; running ones stop before their next call."""
    from . import jobs

    if job_id is None and by_name is None:
        raise click.UsageError("cancel needs JOB (or --name NAME)")
    job = _job(job_id, by_name)
    n, ids = jobs.cancel(_settings(), job["id"])
    click.echo(f"{job['id']}: cancel requested; {n} queued task(s) cancelled")
    if ids:
        click.echo(f"{job['id']}: {len(ids)} provider batch(es) cancelled; their finished lines are billed")


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--budget", help="A new (larger) budget in USD for the job.")
@click.option("--skipped-only", is_flag=True, help="Requeue skipped and cancelled tasks, not failed ones.")
@click.option("--wait/--no-wait", default=True, help="Run now and wait (default). Embedded --no-wait: `resume` runs them later.")
@click.option("--simulate", is_flag=True, help="Embedded: force the simulator.")
@click.option("--concurrency", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def retry(job_id, by_name, budget, skipped_only, wait, simulate, concurrency, as_json):
    """Requeue JOB's failed and skipped tasks (optionally with a larger --budget) and run them."""
    from . import jobs

    if job_id is None and by_name is None:
        raise click.UsageError("retry needs JOB (or --name NAME)")
    settings = _settings()
    job = _job(job_id, by_name)
    if job["executor"] == jobs.CELERY and settings.broker_url:
        jobs.check_broker(settings)
    n = jobs.requeue(settings, job["id"], budget_usd=budget, include_failed=not skipped_only)
    if not as_json:
        _err(f"{job['id']}: {n} task(s) requeued")
    sys.exit(_run_job(settings, jobs.find_job(settings, job["id"]), concurrency=concurrency, as_json=as_json,
                      wait=wait, simulate=simulate))


@main.command()
@click.argument("job_id", required=False)
@click.option("--assume", type=click.Choice(["billed", "unbilled"]), default="billed", show_default=True,
              help="billed: charge the reserved upper bound (the cap stays true against the invoice); unbilled: release it.")
@click.option("--grace", type=float, default=0.0, help="Only attempts unknown for at least this many seconds.")
def reconcile(job_id, assume, grace):
    """Settle attempts whose outcome is unknown (worker died mid-call, timeout after send)."""
    from . import jobs

    settings = _settings()
    if job_id is not None:
        job_id = _job(job_id)["id"]
    n = jobs.reconcile(settings, job_id, assume=assume, grace_s=grace)
    click.echo(f"reconciled {n} attempt(s) as {assume}")


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
@click.option("--fault", "faults", multiple=True, help="NAME=RATE, e.g. hang=0.01 (storm429, burst5xx, hang, reset, malformed, truncated, slow_body).")
@click.option("--batch-turnaround", type=float, default=1.0, show_default=True,
              help="Seconds a batch takes to finish (0: at once; negative: never).")
@click.option("--batch-fail-rate", type=float, default=0.0, show_default=True, help="Share of batch lines that fail.")
@click.option("--flex-unavailable", type=float, default=0.0, show_default=True,
              help="Share of flex calls answered 429 resource unavailable.")
def simulator(host, port, latency, latency_jitter, latency_p50, latency_p99, error_rate, rpm, seed, faults,
              batch_turnaround=1.0, batch_fail_rate=0.0, flex_unavailable=0.0):
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
                              seed=seed, faults=fault_rates, latency_p50_s=latency_p50, latency_p99_s=latency_p99,
                              batch_turnaround_s=batch_turnaround, batch_fail_rate=batch_fail_rate,
                              flex_unavailable=flex_unavailable)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    run_server(host, port, cfg)


@main.group()
def db():
    """Store administration."""


@db.command("upgrade")
def db_upgrade():
    """Apply pending migrations (also done automatically on first use)."""
    from . import jobs

    settings = _settings()
    click.echo(f"{jobs.store_label(settings)} at revision {jobs.store_revision(settings)}")


@main.group()
def catalog():
    """Model catalog tools."""


@catalog.command("sync")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False),
              help="LiteLLM's price file (default: the installed litellm package's copy; never the network).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True)
def catalog_sync(source, dry_run, as_json):
    """Refresh the catalog from LiteLLM's price file: priced text-chat models only, with long-context tiers,
    cache and batch prices and shutdown dates. Shows what was added, changed and retired."""
    from .catalog.sync import sync

    settings = _settings()
    res = sync(settings, source=source, dry_run=dry_run)
    if as_json:
        _print_json(res.as_dict())
        return
    click.echo(f"{res.source}: {res.imported} chat models kept; skipped: "
               + ", ".join(f"{k} {v}" for k, v in res.skipped.items()))
    for title, rows in (("added", res.added), ("retired", res.retired)):
        click.echo(f"{title}: {len(rows)}" + (": " + ", ".join(rows[:20]) + (" ..." if len(rows) > 20 else "")
                                              if rows else ""))
    click.echo(f"changed: {len(res.changed)}")
    for key, changes in res.changed[:20]:
        click.echo(f"  {key}: " + "; ".join(changes))
    if len(res.changed) > 20:
        click.echo(f"  ... {len(res.changed) - 20} more (--json lists all)")
    if not res.written:
        click.echo(f"dry run: {res.output} not written")
    elif not settings.catalog_file:
        click.echo(f"wrote {res.output}; set catalog_file = \"{res.output}\" in llmbatch.toml or "
                   f"LLMBATCH_CATALOG_FILE to use it")
    else:
        click.echo(f"wrote {res.output} (catalog_file)")


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
    from . import jobs
    from .service import bind_host, check_installed, serve as run_service

    settings = _settings()
    check_installed()
    jobs.store(settings)
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
    from . import jobs
    from .service.tokens import create_token, parse_cap

    settings = _settings()
    secret = create_token(jobs.store(settings), name, daily_cap_picos=parse_cap(daily_cap))
    click.echo(secret)
    _err(f"token {name!r} created; keep the secret above, it is stored hashed and cannot be shown again")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
def tokens_list(as_json):
    """The tokens: name, daily cap, created, revoked (never the secrets)."""
    from . import jobs
    import time

    from .service.tokens import list_tokens

    rows = list_tokens(jobs.store(_settings()))
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
    from . import jobs
    from .service.tokens import revoke_token

    revoke_token(jobs.store(_settings()), name)
    _err(f"token {name!r} revoked")


def _one_line(e: BaseException) -> str:
    """An error as one line: LLMBatch errors say what to do; store and OS errors are named for what they are."""
    if isinstance(e, LLMBatchError):
        return " ".join(str(e).split())
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(e, SQLAlchemyError):
        from .store.db import classify_store_error

        known = classify_store_error(e)
        if known is not None:
            return str(known)
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        return f"store error: {first[:300]}"
    if isinstance(e, OSError):
        return f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}"
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"broker error ({type(e).__name__}): {first}; check LLMBATCH_BROKER_URL and that the broker runs"


def entrypoint() -> None:
    try:
        rv = main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see {e.ctx.command_path} --help)"
        _err(" ".join(e.format_message().split()) + hint)
        sys.exit(EXIT_INPUT if isinstance(e, click.UsageError) else e.exit_code)
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        from sqlalchemy.exc import SQLAlchemyError

        broker = type(e).__module__.split(".")[0] in ("kombu", "redis", "celery", "amqp")
        if _debug or not (isinstance(e, (LLMBatchError, SQLAlchemyError, OSError)) or broker):
            raise
        _err(_one_line(e))
        sys.exit(EXIT_INPUT)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    entrypoint()
