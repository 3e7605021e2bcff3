"""The job options shared by run, submit, calibrate, estimate and route, and the job spec they build."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import InputError
from .common import current_settings

if TYPE_CHECKING:  # pydantic models cost ~100 ms to import: only the commands that build a job load them
    from ..models import JobSpec


def job_options(f):
    opts = [
        click.option(
            "--spec",
            "spec_path",
            type=click.Path(exists=True, dir_okay=False),
            help="Job spec YAML (defaults and limits).",
        ),
        click.option(
            "--task",
            type=click.Choice(["summarize", "classify", "extract", "chat"]),
            help="Default task for lines without one.",
        ),
        click.option("--labels", help="Comma-separated labels for classify lines without their own."),
        click.option(
            "--schema",
            "schema_path",
            type=click.Path(exists=True, dir_okay=False),
            help="JSON Schema file for extract lines.",
        ),
        click.option("--budget", help="Hard cap for the job, in USD (e.g. 40 or 0.25)."),
        click.option("--max-cost-per-task", help="Skip tasks whose cheapest eligible estimate exceeds this (USD)."),
        click.option(
            "--min-tier", type=click.Choice(["mini", "standard", "frontier"]), help="Lowest model tier allowed."
        ),
        click.option("--models", "allow", help="Comma-separated allow-list of models (provider/model or model)."),
        click.option("--deny", help="Comma-separated deny-list of models."),
        click.option("--model", "pin", help="Pin every line to this model (no routing)."),
        click.option("--max-output-tokens", type=click.IntRange(min=1), help="Default output cap per task."),
        click.option(
            "--simulate", is_flag=True, help="Send every call to the bundled simulator (no API keys, no cost)."
        ),
        click.option(
            "--no-escalate", is_flag=True, help="Do not escalate to a higher tier when output fails validation."
        ),
        click.option(
            "--strict", is_flag=True, help="Refuse the whole file on the first bad line (exit 2, nothing written)."
        ),
        click.option("--name", help="A name for the job (commands accept it in place of the id)."),
        click.option(
            "--new",
            "new",
            is_flag=True,
            help="Start a fresh job even if this file already ran with these options (default: resume it).",
        ),
        click.option("--no-cache", is_flag=True, help="Do not answer tasks from earlier identical calls (pay again)."),
        click.option(
            "--channel",
            type=click.Choice(["auto", "online", "flex", "batch"]),
            help="How calls are sent: online, flex (OpenAI flex tier), batch (provider batch APIs, ~50% off) "
            "or auto (default: the cheapest that meets --deadline).",
        ),
        click.option(
            "--deadline", help="When the job must be done, from submit: 90s, 30m, 24h (default: as soon as possible)."
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _comma_list(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def build_spec(
    spec_path,
    task,
    labels,
    schema_path,
    budget,
    max_cost_per_task,
    min_tier,
    allow,
    deny,
    pin,
    max_output_tokens,
    simulate,
    no_escalate,
    strict,
    name,
    new=False,
    no_cache=False,
    channel=None,
    deadline=None,
) -> JobSpec:
    from pydantic import ValidationError

    from ..models import JobSpec
    from ..specfile import load_schema_file, load_spec_file

    # Bounded reads: size and YAML alias limits (specfile.py); a problem is an InputError (one line, exit 2).
    limits = current_settings().input_limits
    data = load_spec_file(spec_path, limits) if spec_path else {}
    schema = load_schema_file(schema_path, limits) if schema_path else None
    flags = {
        "task": task,
        "name": name,
        "min_tier": min_tier,
        "model": pin,
        "max_output_tokens": max_output_tokens,
        "labels": _comma_list(labels),
        "models": _comma_list(allow),
        "deny": _comma_list(deny),
        "budget_usd": budget,
        "max_cost_per_task_usd": max_cost_per_task,
        "schema": schema,
        "channel": channel,
        "deadline": deadline,
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
