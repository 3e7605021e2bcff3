"""Commands that plan a file without running it: estimate (the cost) and route (the model of each task)."""

from __future__ import annotations

import click

from .common import current_settings, err, print_json, show_line_errors
from .main import main
from .options import build_spec, job_options


def _keys_assumed(plan) -> None:
    if plan.keys_assumed:
        err(
            "no provider API key is set: every model was priced as if its provider were configured "
            "(set OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, ... to plan for what can run here, "
            "or use --simulate)"
        )


def _plan_line_errors(input_path, plan) -> None:
    """estimate and route: the lines that were not planned."""
    show_line_errors(
        input_path,
        plan.errors,
        plan.invalid_lines,
        summary=f"{plan.invalid_lines} line(s) invalid and not planned; {plan.tasks} planned",
    )


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--json", "as_json", is_flag=True)
def estimate(input_path, as_json, new, **opts):
    """The cost of INPUT_PATH before running: expected, and the upper bound reservations will hold. No calls."""
    from ..money import exact_usd
    from ..planning import plan_file

    settings = current_settings()
    spec = build_spec(**opts)
    plan = plan_file(settings, input_path, spec)
    _keys_assumed(plan)
    if as_json:
        print_json(plan.estimate_dict())
    else:
        from ..render import estimate_table

        estimate_table(plan)
        click.echo(
            "by channel: "
            + ", ".join(f"{c['channel']} ${c['estimated_usd'] or 0:.6f} ({c['tasks']} tasks)" for c in plan.by_channel)
        )
    _plan_line_errors(input_path, plan)
    if plan.over_budget:
        err(
            f"the upper bound {exact_usd(plan.upper_bound_picos)} exceeds the budget ${spec.budget_usd}: "
            f"some tasks may end skipped (budget); raise --budget or lower max_output_tokens"
        )


@main.command("route")
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option("--explain", is_flag=True, help="Show why each cheaper model was not eligible.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", type=int, default=50, show_default=True, help="Tasks to show (table output).")
def route_cmd(input_path, explain, as_json, limit, new, **opts):
    """Which model each task of INPUT_PATH would get, and why."""
    from ..planning import plan_file, route_item

    settings = current_settings()
    spec = build_spec(**opts)
    if as_json:
        import orjson

        from ..money import dumps_json

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
    from ..render import route_table

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
