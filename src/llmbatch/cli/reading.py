"""Commands that read a job: status, results, report, and the `jobs` list."""

from __future__ import annotations

import contextlib
import sys

import click

from ..terminal_text import printable
from .common import EXIT_FOR_STATUS, EXIT_OK, FINAL, JOB_STATUSES, current_settings, find_job, name_option, print_json
from .main import main


@main.command("jobs")
@click.option("--status", "status_", type=click.Choice(JOB_STATUSES), help="Only jobs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs_cmd(status_, limit, as_json):
    """List jobs, newest first: id, name, created, status, counts, spent, budget."""
    from .. import jobs

    settings = current_settings()
    rows = jobs.list_jobs(settings, status=status_, limit=limit)
    if as_json:
        print_json(rows)
    else:
        from ..render import jobs_table

        jobs_table(rows, store=jobs.store_label(settings))


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("--watch", is_flag=True, help="Live progress bar until the job ends.")
@click.option("--errors", "show_errors", is_flag=True, help="List the input lines that were rejected.")
@click.option("--json", "as_json", is_flag=True)
def status(job_id, by_name, watch, show_errors, as_json):
    """Progress of JOB (default: the newest job)."""
    st, errors = _lean_status(job_id, by_name) if not (watch or show_errors) else None, []
    if st is None:
        from .. import jobs

        settings = current_settings()
        job = find_job(job_id, by_name)
        if watch and not as_json:
            from ..render import WatchProgress

            with WatchProgress() as w:
                jobs.wait_for(settings, job["id"], on_update=w.update)
        st = jobs.status(settings, job["id"])
        errors = jobs.input_errors(settings, job["id"]) if show_errors else []
    if as_json:
        if show_errors:
            st["input_errors"] = [{"line": e["line_no"], "reason": e["reason"]} for e in errors]
        print_json(st)
    else:
        c = st["counts"]
        click.echo(
            f"{st['job_id']}  {st['status']}  total={c['total']} queued={c['queued']} running={c['running']} "
            f"succeeded={c['succeeded']} failed={c['failed']} skipped={c['skipped']} cancelled={c['cancelled']}  "
            f"spent=${st['spent_usd']:.6f}" + (f" of ${st['budget_usd']:.2f}" if st["budget_usd"] is not None else "")
        )
        if st["status"] == "interrupted":
            click.echo(
                f"interrupted with {c['queued'] + c['running']:,} task(s) left — resume with: "
                f"llmbatch resume {st['job_id']}"
            )
        for e in errors:
            click.echo(printable(e["reason"]))
    if st["status"] in FINAL:
        sys.exit(EXIT_FOR_STATUS.get(st["status"], EXIT_OK))


def _lean_status(job_id: str | None, by_name: str | None) -> dict | None:
    """status() of the job without importing SQLAlchemy, pydantic or the settings model (status_reader.py);
    None when only the full path can answer exactly (it then answers, or words the error)."""
    from ..status_reader import Fallback, database_url, read_status

    try:
        return read_status(database_url(), job_id, by_name)
    except Fallback:
        return None


@main.command()
@click.argument("job_id", required=False)
@name_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file (default stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "openai"]), default="jsonl", show_default=True)
def results(job_id, by_name, output, fmt):
    """One line per task of JOB, in input order."""
    from .. import jobs
    from ..money import dumps_json
    from ..reporting import openai_batch_line, openai_rejected_line

    settings = current_settings()
    job = find_job(job_id, by_name)
    if fmt == "jsonl":  # bytes straight to the file: a page of lines per write (a million lines in seconds)
        with open(output, "wb") if output else contextlib.nullcontext(sys.stdout.buffer) as f:
            for chunk in jobs.result_jsonl(settings, job["id"]):
                f.write(chunk)
        return
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    try:
        lines = jobs.result_lines(settings, job["id"], with_final_attempt=fmt == "openai")
        if fmt == "csv":
            from ..render import results_csv

            results_csv(out, lines)
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
    from .. import jobs

    settings = current_settings()
    job = find_job(job_id, by_name)
    if show_attempts:
        from ..money import dumps_json

        for a in jobs.attempt_lines(settings, job["id"]):
            click.echo(dumps_json(a).decode())
        return
    rep = jobs.report(settings, job["id"], baseline_model=baseline)
    if as_json:
        print_json(rep)
    elif as_csv:
        from ..render import report_csv

        report_csv(sys.stdout, rep)
    else:
        from ..render import report_tables

        report_tables(rep)
