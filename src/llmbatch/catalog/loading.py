"""The effective catalog: the builtin models.json, then `catalog_file`, then [providers] / [models] from settings.

Later layers win. `catalog_file` is a whole document (the models.json shape, e.g. written by
`llmbatch catalog import`) or LiteLLM's price file itself, imported on the fly. Entries in [models."..."]
are partial: they change fields of a model that exists, or add one (then with every required field; `api`
defaults to its provider's).
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from ..config import Settings
from ..errors import CatalogError, ConfigError
from . import Catalog, ModelInfo, ProviderInfo, builtin_catalog
from .litellm_import import import_litellm


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "entry"
    return f"{where}: {err.get('msg')}"


def is_litellm_document(doc: Mapping[str, Any]) -> bool:
    """Our documents have a "models" list; LiteLLM's file is an object of model entries."""
    return not isinstance(doc.get("models"), list)


def merge_document(base: Catalog, doc: Mapping[str, Any], *, source: str) -> Catalog:
    """`base` with every provider and model of a catalog document added or replaced whole."""
    providers = dict(base.providers)
    for name, fields in (doc.get("providers") or {}).items():
        try:
            providers[name] = ProviderInfo(**{**fields, "name": name})
        except (ValidationError, TypeError) as e:
            detail = _first_error(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"{source}: provider {name!r}: {detail}") from None
    models = {m.key: m for m in base}
    for i, fields in enumerate(doc["models"]):
        label = f"{fields.get('provider')}/{fields.get('model')}" if isinstance(fields, dict) else f"#{i}"
        try:
            m = ModelInfo(**fields)
        except (ValidationError, TypeError) as e:
            detail = _first_error(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"{source}: model {label}: {detail}") from None
        models[m.key] = m
    try:
        return Catalog(models.values(), providers.values())
    except CatalogError as e:
        raise ConfigError(f"{source}: {e}") from None


def _read_catalog_file(path: str, base: Catalog) -> Mapping[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text("utf-8"), parse_float=Decimal)
    except OSError as e:
        raise ConfigError(
            f"catalog_file {path}: cannot read it ({e.strerror or e}); fix the path or unset it"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"catalog_file {path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"catalog_file {path}: expected a JSON object")
    if is_litellm_document(doc):
        try:
            return import_litellm(doc, existing=base)
        except CatalogError as e:
            raise ConfigError(f"catalog_file {path}: {e}") from None
    return doc


def apply_settings_overrides(
    base: Catalog, providers: Mapping[str, Mapping[str, Any]], models: Mapping[str, Mapping[str, Any]]
) -> Catalog:
    cat = base
    for name, fields in providers.items():
        try:
            cat = cat.with_overrides(providers={name: dict(fields)})
        except (ValidationError, TypeError) as e:
            detail = _first_error(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f"[providers.{name}]: {detail}") from None
    for name, fields in models.items():
        fields = dict(fields)
        provider = fields.get("provider") or (name.split("/", 1)[0] if "/" in name else None)
        if "api" not in fields and cat.find(name) is None and provider in cat.providers:
            fields["api"] = cat.providers[provider].api
        try:
            cat = cat.with_overrides(models={name: fields})
        except (ValidationError, TypeError) as e:
            detail = _first_error(e) if isinstance(e, ValidationError) else str(e)
            raise ConfigError(f'[models."{name}"]: {detail}') from None
        except CatalogError as e:
            raise ConfigError(f'[models."{name}"]: {e}') from None
    return cat


@lru_cache(maxsize=1)
def _builtin() -> Catalog:
    return builtin_catalog()


def _file_stamp(path: str | None) -> tuple[str, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1)  # uncached miss: _load raises a ConfigError naming the path
    return (path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _load(stamp: tuple[str, int, int] | None, providers_json: str, models_json: str) -> Catalog:
    cat = _builtin()
    if stamp is not None:
        cat = merge_document(cat, _read_catalog_file(stamp[0], cat), source=f"catalog_file {stamp[0]}")
    return apply_settings_overrides(cat, json.loads(providers_json), json.loads(models_json))


def load_catalog(settings: Settings) -> Catalog:
    """The catalog the engine routes and prices with. Cached per settings content and catalog file version,
    so a worker pays for the load once, and an edited catalog_file is picked up."""
    # Settings holds dicts (unhashable), so the cache key is their canonical JSON; str() keeps Decimals exact.
    providers_json = json.dumps(settings.providers, sort_keys=True, default=str)
    models_json = json.dumps(settings.models, sort_keys=True, default=str)
    return _load(_file_stamp(settings.catalog_file), providers_json, models_json)


def clear_cache() -> None:
    _load.cache_clear()
