"""`llmbatch calibrate`: measure cheaper models against a reference on a sample and write a quality policy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import InputError
from .common import EXIT_INPUT, current_settings, err, print_json
from .main import main
from .options import build_spec, job_options

if TYPE_CHECKING:
    from ..config import Settings
    from ..models import JobSpec


def calibrate_sample(settings: Settings, input_path: str, spec: JobSpec, concurrency: int, **options):
    """Plan (shown on stderr before anything is spent), then run the calibration; exit 2 on bad input."""
    from ..quality import calibrate as cal
    from ..quality.report import plan_lines

    try:
        plan = cal.plan(settings, input_path, spec, cal.Options(budget_usd=spec.budget_usd, **options))
        for line in plan_lines(plan):
            click.echo(line, err=True)
        return cal.execute(settings, plan, spec, input_path=input_path, concurrency=concurrency)
    except InputError as e:
        err(str(e))
        sys.exit(EXIT_INPUT)


@main.command()
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False))
@job_options
@click.option(
    "--target",
    type=float,
    default=0.95,
    show_default=True,
    help="Agreement with the reference that the policy must guarantee.",
)
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Confidence of that guarantee.")
@click.option("--sample", type=int, help="Sampled lines per task group (default: sized so the bound can be met).")
@click.option(
    "--reference", help="Reference model (default: the cheapest of the highest tier that can take the tasks)."
)
@click.option("--candidates", type=int, default=4, show_default=True, help="Cheaper models measured per group.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
@click.option("--concurrency", type=int, help="Calls in flight (default from config).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Write the policy here.")
@click.option("--json", "as_json", is_flag=True, help="Print the policy as JSON too.")
def calibrate(
    input_path, target, confidence, sample, reference, candidates, seed, concurrency, output, as_json, **opts
):
    """Measure which cheaper models agree with a reference on a sample of INPUT_PATH; write a policy.
    --budget is the calibration's hard cap."""
    import orjson

    from ..money import dumps_json
    from ..quality.report import calibration_lines

    settings = current_settings()
    spec = build_spec(**opts)
    result = calibrate_sample(
        settings,
        input_path,
        spec,
        concurrency or spec.concurrency or settings.concurrency,
        target=target,
        confidence=confidence,
        sample=sample,
        reference=reference,
        candidates=candidates,
        seed=seed,
    )
    Path(output).write_bytes(dumps_json(result.policy, option=orjson.OPT_INDENT_2))
    for line in calibration_lines(result.policy):
        click.echo(line)
    if as_json:
        print_json(result.policy)
    click.echo(f"policy written to {output}; use it with `llmbatch run FILE --policy {output}`", err=True)
