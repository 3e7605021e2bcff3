"""Commands on the model catalog: models (the prices), catalog sync and catalog import (from LiteLLM's file)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import current_settings, print_json
from .main import main


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """The model catalog with prices (USD per 1M tokens)."""
    from ..catalog.loading import load_catalog

    cat = load_catalog(current_settings())
    rows = sorted((m.public_dict() for m in cat), key=lambda d: (d["provider"], d["input_per_mtok"]))
    if as_json:
        print_json(rows)
    else:
        from ..render import models_table

        models_table(rows)


@main.group()
def catalog():
    """Model catalog tools."""


@catalog.command("sync")
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, dir_okay=False),
    help="LiteLLM's price file (default: the installed litellm package's copy; never the network).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True)
def catalog_sync(source, dry_run, as_json):
    """Refresh the catalog from LiteLLM's price file: priced text-chat models only, with long-context tiers,
    cache and batch prices and shutdown dates. Shows what was added, changed and retired."""
    from ..catalog.sync import sync

    settings = current_settings()
    res = sync(settings, source=source, dry_run=dry_run)
    if as_json:
        print_json(res.as_dict())
        return
    click.echo(
        f"{res.source}: {res.imported} chat models kept; skipped: "
        + ", ".join(f"{k} {v}" for k, v in res.skipped.items())
    )
    for title, rows in (("added", res.added), ("retired", res.retired)):
        click.echo(
            f"{title}: {len(rows)}" + (": " + ", ".join(rows[:20]) + (" ..." if len(rows) > 20 else "") if rows else "")
        )
    click.echo(f"changed: {len(res.changed)}")
    for key, changes in res.changed[:20]:
        click.echo(f"  {key}: " + "; ".join(changes))
    if len(res.changed) > 20:
        click.echo(f"  ... {len(res.changed) - 20} more (--json lists all)")
    if not res.written:
        click.echo(f"dry run: {res.output} not written")
    elif not settings.catalog_file:
        click.echo(
            f'wrote {res.output}; set catalog_file = "{res.output}" in llmbatch.toml or LLMBATCH_CATALOG_FILE to use it'
        )
    else:
        click.echo(f"wrote {res.output} (catalog_file)")


@catalog.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="llmbatch.catalog.json", show_default=True)
@click.option("--provider", "providers", multiple=True, help="Only these providers (repeatable).")
def catalog_import(file, output, providers):
    """Read LiteLLM's model_prices_and_context_window.json into a catalog file (set catalog_file to use it)."""
    import orjson

    from ..catalog.litellm_import import import_litellm

    doc = import_litellm(file, providers=set(providers) or None)
    Path(output).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    click.echo(
        f'wrote {len(doc["models"])} models to {output}; set catalog_file = "{output}" in llmbatch.toml '
        f"or LLMBATCH_CATALOG_FILE to use it"
    )
