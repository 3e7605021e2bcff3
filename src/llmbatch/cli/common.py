"""What every command shares: exit codes, one-line errors on stderr, JSON on stdout, the settings, the job
addressed on the command line. Imports only click and small modules: `llmbatch --help` loads no store,
no pydantic, no HTTP client (tests/unit/test_cli_imports.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..terminal_text import printable

if TYPE_CHECKING:
    from ..config import Settings

EXIT_OK, EXIT_INPUT, EXIT_FAILED, EXIT_BUDGET, EXIT_CANCELLED, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 130
EXIT_FOR_STATUS = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "budget_exhausted": EXIT_BUDGET,
    "cancelled": EXIT_CANCELLED,
    "interrupted": EXIT_INTERRUPTED,
}
FINAL = ("succeeded", "failed", "budget_exhausted", "cancelled")  # a job in one of these has nothing left to run
JOB_STATUSES = ("queued", "running", "interrupted", *FINAL)
MAX_ERRORS_SHOWN = 20


def err(msg: str) -> None:
    click.echo(f"llmbatch: {printable(msg)}", err=True)


def print_json(obj) -> None:
    import orjson

    from ..money import dumps_json

    click.echo(dumps_json(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def current_settings(**overrides) -> Settings:
    from ..config import load_settings

    return load_settings(**overrides)  # a ConfigError becomes one line and exit 2 (entrypoint)


def find_job(job_id: str | None, name: str | None = None) -> dict:
    """The job addressed by id (or name) or --name; the newest with neither. JobNotFound names the store."""
    from .. import jobs

    return jobs.find_job(current_settings(), job_id, name=name)


def name_option(f):
    return click.option("--name", "by_name", help="Address the job by its name instead of its id.")(f)


def show_line_errors(input_path, errors, count: int, *, summary: str, more: str = "") -> None:
    """Bad input lines on stderr (stdout stays parseable): the first MAX_ERRORS_SHOWN, how many more, a summary."""
    for le in errors[:MAX_ERRORS_SHOWN]:
        err(f"{input_path}: {le.reason}")
    if count > MAX_ERRORS_SHOWN:
        err(f"... and {count - MAX_ERRORS_SHOWN} more bad lines{more}")
    if count:
        err(summary)
