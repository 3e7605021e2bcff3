"""Commands that act on a job or the store without running it: cancel, reconcile, db upgrade."""

from __future__ import annotations

import click

from .common import current_settings, find_job, name_option
from .main import main


@main.command()
@click.argument("job_id", required=False)
@name_option
def cancel(job_id, by_name):
    """Stop JOB: queued tasks are cancelled now; running ones stop before their next call."""
    from .. import jobs

    if job_id is None and by_name is None:
        raise click.UsageError("cancel needs JOB (or --name NAME)")
    job = find_job(job_id, by_name)
    n, ids = jobs.cancel(current_settings(), job["id"])
    click.echo(f"{job['id']}: cancel requested; {n} queued task(s) cancelled")
    if ids:
        click.echo(f"{job['id']}: {len(ids)} provider batch(es) cancelled; their finished lines are billed")


@main.command()
@click.argument("job_id", required=False)
@click.option(
    "--assume",
    type=click.Choice(["billed", "unbilled"]),
    default="billed",
    show_default=True,
    help="billed: charge the reserved upper bound (the cap stays true against the invoice); unbilled: release it.",
)
@click.option("--grace", type=float, default=0.0, help="Only attempts unknown for at least this many seconds.")
def reconcile(job_id, assume, grace):
    """Settle attempts whose outcome is unknown (worker died mid-call, timeout after send)."""
    from .. import jobs

    settings = current_settings()
    if job_id is not None:
        job_id = find_job(job_id)["id"]
    n = jobs.reconcile(settings, job_id, assume=assume, grace_s=grace)
    click.echo(f"reconciled {n} attempt(s) as {assume}")


@main.group()
def db():
    """Store administration."""


@db.command("upgrade")
def db_upgrade():
    """Apply pending migrations (also done automatically on first use)."""
    from .. import jobs

    settings = current_settings()
    click.echo(f"{jobs.store_label(settings)} at revision {jobs.store_revision(settings)}")
