"""Commands that run a job: run, submit, resume, retry (the lifecycle itself lives in llmbatch.jobs)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..errors import InputError
from .calibration import calibrate_sample
from .common import (
    EXIT_FAILED,
    EXIT_FOR_STATUS,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    FINAL,
    current_settings,
    err,
    find_job,
    name_option,
    print_json,
    show_line_errors,
)
from .main import main
from .options import build_spec, job_options

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import JobSpec


def _create(settings: Settings, input_path: str, spec: JobSpec, executor: str, as_json: bool):
    from ..jobs import create_job

    try:
        job_id, report = create_job(settings, input_path, spec, executor=executor, strict=spec.strict)
    except InputError as e:
        err(f"{input_path}: {e}")
        if spec.strict:
            err("nothing was written (--strict); fix the line or drop --strict to run the valid lines")
        sys.exit(EXIT_INPUT)
    show_line_errors(
        input_path,
        report.errors,
        report.rejected,
        more=f"; `llmbatch status {job_id} --errors` lists them",
        summary=f"{report.rejected} line(s) rejected, {report.accepted} accepted; the accepted lines run",
    )
    if not as_json:
        click.echo(f"job {job_id}: {report.accepted} tasks", err=True)
    return job_id, report


def _job_for_command(
    settings: Settings, input_path: str, spec: JobSpec, *, executor: str, new: bool, as_json: bool
) -> tuple[dict, int, bool]:
    """run/submit: the job this command runs. The same file with the same options resumes the job made from it
    (or reports it, if it finished); --new, or a first run, creates one. Returns (job row, lines rejected,
    finished already)."""
    from .. import jobs

    if not new:
        found = jobs.resume_same_command(settings, input_path, spec)
        if found is not None:
            job, plan = found
            if plan is None:
                err(
                    f"job {job['id']} already ran {input_path} with these options and ended {job['status']}; "
                    f"its summary follows (--new runs the file again as a new job)"
                )
                return job, job["invalid_lines"], True
            err(f"resuming job {job['id']}: {plan.done:,} of {plan.done + plan.left:,} done (--new starts a fresh job)")
            return job, job["invalid_lines"], False
    job_id, report = _create(settings, input_path, spec, executor, as_json)
    return jobs.find_job(settings, job_id), report.rejected, False


def _run_job(
    settings: Settings, job: dict, *, concurrency: int | None, as_json: bool, wait: bool = True, simulate: bool = False
) -> int:
    """Dispatch the job with its executor, wait, print the end: the exit code."""
    from .. import jobs

    done, left = jobs.done_and_left(settings, job["id"])
    if left:
        from ..render import LiveProgress

        with LiveProgress(done + left, done=done, enabled=not as_json and sys.stderr.isatty()) as progress:
            outcome = jobs.dispatch(
                settings,
                job,
                concurrency=concurrency,
                wait=wait,
                force_simulate=simulate,
                on_progress=progress.update,
                on_notice=err,
            )
        if outcome.interrupted and outcome.status is None:  # stopped waiting on Celery workers
            sys.exit(EXIT_INTERRUPTED)
        if outcome.interrupted:
            if as_json:
                print_json(jobs.status(settings, job["id"]))
            err(f"interrupted: {outcome.done:,} done, {outcome.left:,} left — resume with: llmbatch resume {job['id']}")
            sys.exit(EXIT_INTERRUPTED)
        if not wait:
            if not as_json:
                err(
                    f"{job['id']}: {outcome.left:,} task(s) wait; run them with: llmbatch resume {job['id']}"
                    if job["executor"] == "local"
                    else f"{job['id']}: dispatched"
                )
            return EXIT_OK
    return _finish_output(settings, job["id"], as_json)


def _check_can_run(settings: Settings, executor: str, *, simulate: bool) -> None:
    """Before anything is stored or changed: the broker answers (Celery; without one, dispatch says which to
    set), or this process has a provider key (embedded)."""
    from .. import jobs

    if executor == jobs.CELERY:
        if settings.broker_url:
            jobs.check_broker(settings)
    else:
        jobs.check_credentials(settings, simulate=simulate)


def _finish_output(settings: Settings, job_id: str, as_json: bool) -> int:
    from .. import jobs

    summary = jobs.summary(settings, job_id)
    if as_json:
        print_json(
            {
                k: summary[k]
                for k in ("job_id", "status", "counts", "spent_usd", "reserved_usd", "budget_usd", "invalid_lines")
            }
        )
    else:
        from ..render import summary_table

        summary_table(summary)
    if summary["status"] in EXIT_FOR_STATUS:
        return EXIT_FOR_STATUS[summary["status"]]
    return EXIT_OK if not (summary["counts"]["failed"]) else EXIT_FAILED


def _quality_spec(
    settings: Settings, input_path: str, spec: JobSpec, policy_path, quality, concurrency: int, as_json: bool
) -> JobSpec:
    """run --policy / --quality: the job spec with its policy (calibrating first for --quality)."""
    from ..quality import calibrate, policy
    from ..quality.report import calibration_lines

    if policy_path and quality is not None:
        raise click.UsageError("give --policy or --quality, not both")
    if policy_path:
        try:
            return spec.model_copy(update={"policy": policy.load(policy_path)})
        except InputError as e:
            err(str(e))
            sys.exit(EXIT_INPUT)
    result = calibrate_sample(settings, input_path, spec, concurrency, target=quality)
    if not as_json:
        for line in calibration_lines(result.policy):
            click.echo(line, err=True)
    return calibrate.spec_with_policy(spec, result)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight (default from config: 64).")
@click.option("--local", "force_local", is_flag=True, help="Run embedded even when a broker is configured.")
@click.option("--json", "as_json", is_flag=True, help="Print the final status as JSON.")
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Route by a quality policy written by `llmbatch calibrate`.",
)
@click.option(
    "--quality",
    type=float,
    help="Calibrate on a sample first (inside --budget), then route by the "
    "measured policy: agreement with the reference >= this (e.g. 0.95).",
)
def run(input_path, concurrency, force_local, as_json, new, policy_path, quality, **opts):
    """Submit INPUT_PATH and wait for it. Embedded executor unless a broker is configured. Running the same file
    with the same options again resumes its job (--new starts a fresh one)."""
    from .. import jobs

    settings = current_settings()
    spec = build_spec(**opts)
    if policy_path or quality is not None:
        spec = _quality_spec(
            settings,
            input_path,
            spec,
            policy_path,
            quality,
            concurrency or spec.concurrency or settings.concurrency,
            as_json,
        )
    executor = jobs.choose_executor(settings, force_local=force_local)
    _check_can_run(settings, executor, simulate=spec.simulate)
    job, rejected, finished = _job_for_command(settings, input_path, spec, executor=executor, new=new, as_json=as_json)
    if finished:
        code = _finish_output(settings, job["id"], as_json)
    else:
        code = _run_job(settings, job, concurrency=concurrency or spec.concurrency, as_json=as_json)
    if rejected and (code == EXIT_OK or not job["total_tasks"]):  # the input was not clean (or had no valid line)
        code = EXIT_INPUT
    sys.exit(code)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--json", "as_json", is_flag=True)
def submit(input_path, as_json, new, **opts):
    """Store INPUT_PATH as a job and enqueue it to Celery; prints the job id. The same file with the same options
    again re-enqueues its unfinished job (--new starts a fresh one)."""
    from .. import jobs

    settings = current_settings()
    if not settings.broker_url:
        raise InputError(
            "submit needs a broker: set LLMBATCH_BROKER_URL (e.g. redis://localhost:6379/0), "
            "or use `llmbatch run` to run embedded"
        )
    spec = build_spec(**opts)
    jobs.check_broker(settings)  # before anything is stored
    job, rejected, finished = _job_for_command(
        settings, input_path, spec, executor=jobs.CELERY, new=new, as_json=as_json
    )
    units = 0
    code = EXIT_INPUT if rejected and not job["total_tasks"] else EXIT_OK
    if finished:
        code = EXIT_FOR_STATUS.get(job["status"], EXIT_OK)
    elif job["total_tasks"]:
        if job["executor"] != jobs.CELERY:
            raise InputError(
                f"job {job['id']} runs embedded; resume it with `llmbatch resume {job['id']}` (or submit with --new)"
            )
        from ..executors.celery_app import dispatch_job

        units = dispatch_job(settings, job["id"])
    if as_json:
        print_json({"job_id": job["id"], "tasks": job["total_tasks"], "rejected": rejected, "units": units})
    else:
        click.echo(job["id"])
    sys.exit(code)


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight (embedded).")
@click.option("--simulate", is_flag=True, help="Embedded: force the simulator.")
@click.option("--json", "as_json", is_flag=True)
def resume(job_id, by_name, concurrency, simulate, as_json):
    """Run every unfinished task of an interrupted or stalled JOB (default: the newest job). Unknown outcomes are
    reconciled first; tasks of a dead process on this host are taken back at once."""
    from .. import jobs

    settings = current_settings()
    job = find_job(job_id, by_name)
    if job["status"] in FINAL:
        hint = {
            "cancelled": "`llmbatch retry JOB` requeues its cancelled tasks",
            "succeeded": "nothing is left to run",
        }.get(job["status"], "`llmbatch retry JOB` requeues failed or skipped tasks (--budget USD raises the cap)")
        err(f"job {job['id']} already ended {job['status']}: {hint}")
        sys.exit(_finish_output(settings, job["id"], as_json))
    _check_can_run(settings, job["executor"], simulate=simulate or bool(job["simulate"]))
    plan = jobs.prepare_resume(settings, job["id"])
    extra = [f"took back {plan.taken_back} task(s) of a stopped process"] if plan.taken_back else []
    extra += [f"reconciled {plan.reconciled} call(s) of unknown outcome"] if plan.reconciled else []
    err(
        f"resuming job {job['id']}: {plan.done:,} of {plan.done + plan.left:,} done"
        + (f" ({'; '.join(extra)})" if extra else "")
    )
    sys.exit(
        _run_job(
            settings, jobs.find_job(settings, job["id"]), concurrency=concurrency, as_json=as_json, simulate=simulate
        )
    )


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--budget", help="A new (larger) budget in USD for the job.")
@click.option("--skipped-only", is_flag=True, help="Requeue skipped and cancelled tasks, not failed ones.")
@click.option(
    "--wait/--no-wait", default=True, help="Run now and wait (default). Embedded --no-wait: `resume` runs them later."
)
@click.option("--simulate", is_flag=True, help="Embedded: force the simulator.")
@click.option("--concurrency", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True)
def retry(job_id, by_name, budget, skipped_only, wait, simulate, concurrency, as_json):
    """Requeue JOB's failed and skipped tasks (optionally with a larger --budget) and run them."""
    from .. import jobs

    if job_id is None and by_name is None:
        raise click.UsageError("retry needs JOB (or --name NAME)")
    settings = current_settings()
    job = find_job(job_id, by_name)
    _check_can_run(settings, job["executor"], simulate=simulate or bool(job["simulate"]))
    n = jobs.requeue(settings, job["id"], budget_usd=budget, include_failed=not skipped_only)
    if not as_json:
        err(f"{job['id']}: {n} task(s) requeued")
    sys.exit(
        _run_job(
            settings,
            jobs.find_job(settings, job["id"]),
            concurrency=concurrency,
            as_json=as_json,
            wait=wait,
            simulate=simulate,
        )
    )
