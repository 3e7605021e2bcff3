"""`llmbatch catalog sync`: refresh the catalog from LiteLLM's price file, and say what changed.

The file comes from the installed `litellm` package (the `litellm-prices` extra) or from --from FILE; never
from the network. The package is a data source only: its JSON is located through importlib.metadata, which
reads the installed distribution's file list without importing (or running) any of its code.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from ..config import Settings
from ..errors import CatalogError, ConfigError
from . import Catalog, ModelInfo
from .litellm_import import import_litellm
from .loading import apply_settings_overrides, clear_cache, load_catalog, merge_document, _builtin

DEFAULT_OUTPUT = "llmbatch.catalog.json"
_PRICE_FILES = ("model_prices_and_context_window_backup.json", "model_prices_and_context_window.json")
_COMPARED = (
    "input_per_mtok",
    "cached_price",
    "cache_write_price",
    "output_per_mtok",
    "batch_discount",
    "context_window",
    "max_output_tokens",
    "price_tiers",
)


def installed_price_file() -> Path:
    """The price file inside the installed litellm distribution (located, never imported)."""
    try:
        dist = importlib.metadata.distribution("litellm")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "litellm is not installed: pip install 'llmbatch[litellm-prices]' (a pinned, vetted "
            "version, read as data only), or give the file with --from FILE"
        ) from None
    for f in dist.files or ():
        if f.name in _PRICE_FILES:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ConfigError(f"litellm {dist.version} has no {_PRICE_FILES[0]}; give the file with --from FILE")


@dataclass
class SyncResult:
    source: str
    output: str
    imported: int
    skipped: dict[str, int]
    added: list[str] = field(default_factory=list)
    changed: list[tuple[str, list[str]]] = field(default_factory=list)  # key, "field: old -> new"
    retired: list[str] = field(default_factory=list)
    written: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "output": self.output,
            "imported": self.imported,
            "skipped": self.skipped,
            "added": self.added,
            "changed": [{"model": k, "changes": c} for k, c in self.changed],
            "retired": self.retired,
            "written": self.written,
        }


def _show(m: ModelInfo, name: str) -> str:
    v = getattr(m, name)
    if name == "price_tiers":
        return ",".join(_show_tier(t) for t in v) or "none"
    return str(v)


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f")  # 2.50 and 2.5 are one price


def _show_tier(t) -> str:
    """'>200000:2.5/15 (cached 0.25, write 3)': input/output, then the cache prices that are set."""
    extra = [
        f"{label} {_plain(d)}"
        for label, d in (("cached", t.cached_input_per_mtok), ("write", t.cache_write_per_mtok))
        if d is not None
    ]
    shown = f">{t.above_input_tokens}:{_plain(t.input_per_mtok)}/{_plain(t.output_per_mtok)}"
    return shown + (f" ({', '.join(extra)})" if extra else "")


def _value(m: ModelInfo, name: str):
    """What a field means for billing: Decimals compare by value (1.00 == 1), tiers by their own online rates
    (the base tier and the batch factor are fields of their own)."""
    return m.online_tier_rates[1:] if name == "price_tiers" else getattr(m, name)


def diff(old: Catalog, new: Catalog, today: date) -> tuple[list[str], list[tuple[str, list[str]]], list[str]]:
    added, changed, retired = [], [], []
    old_models = {m.key: m for m in old}
    for m in new.by_key():
        before = old_models.get(m.key)
        if before is None:
            added.append(m.key)
            continue
        changes = [f"{f}: {_show(before, f)} -> {_show(m, f)}" for f in _COMPARED if _value(before, f) != _value(m, f)]
        if m.status_on(today) == "retired" and before.status_on(today) != "retired":
            retired.append(m.key)
        elif m.status_on(today) != before.status_on(today):
            changes.append(f"status: {before.status_on(today)} -> {m.status_on(today)}")
        if changes:
            changed.append((m.key, changes))
    return added, changed, retired


def sync(
    settings: Settings, *, source: str | None = None, dry_run: bool = False, today: date | None = None
) -> SyncResult:
    """Import the price file into the catalog file (settings.catalog_file, else llmbatch.catalog.json) and
    compare the catalog before and after. dry_run writes nothing."""
    today = today or date.today()
    path = Path(source) if source else installed_price_file()
    try:
        doc = import_litellm(path, today=today)
    except CatalogError as e:
        raise ConfigError(f"{path}: {e}") from None
    output = settings.catalog_file or DEFAULT_OUTPUT
    # The catalog before: a first sync may name a catalog_file that does not exist yet.
    old = (
        load_catalog(settings)
        if settings.catalog_file is None or Path(settings.catalog_file).is_file()
        else apply_settings_overrides(_builtin(), settings.providers, settings.models)
    )
    new = apply_settings_overrides(
        merge_document(_builtin(), doc, source=str(path)), settings.providers, settings.models
    )
    added, changed, retired = diff(old, new, today)
    result = SyncResult(
        str(path), output, doc["_import"]["imported"], doc["_import"]["skipped"], added, changed, retired
    )
    if not dry_run:
        doc["_comment"] = f"Synced from {path} by `llmbatch catalog sync` on {today.isoformat()}. " + doc["_comment"]
        Path(output).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        clear_cache()
        result.written = True
    return result
