"""`llmbatch serve` (the HTTP service) and its API tokens."""

from __future__ import annotations

import click

from .common import current_settings, err, print_json
from .main import main


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (loopback only until an API token exists).",
)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--simulate", is_flag=True, help="Run every batch against the bundled simulator (no paid calls).")
def serve(host, port, simulate):
    """The HTTP service: OpenAI-compatible Files/Batches API, the spend dashboard and /metrics."""
    from .. import jobs
    from ..service import bind_host, check_installed, serve as run_service

    settings = current_settings()
    check_installed()
    jobs.store(settings)
    host, notice = bind_host(settings, host)
    if notice:
        err(notice)
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
    from .. import jobs
    from ..service.tokens import create_token, parse_cap

    settings = current_settings()
    secret = create_token(jobs.store(settings), name, daily_cap_picos=parse_cap(daily_cap))
    click.echo(secret)
    err(f"token {name!r} created; keep the secret above, it is stored hashed and cannot be shown again")


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
def tokens_list(as_json):
    """The tokens: name, daily cap, created, revoked (never the secrets)."""
    import time

    from .. import jobs
    from ..service.tokens import list_tokens

    rows = list_tokens(jobs.store(current_settings()))
    if as_json:
        print_json(rows)
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
    from .. import jobs
    from ..service.tokens import revoke_token

    revoke_token(jobs.store(current_settings()), name)
    err(f"token {name!r} revoked")
