"""Model names given on the command line or in a job spec, checked against the catalog before anything is
stored: a typo in --model/--models/--deny would otherwise create a job whose every task fails (or, for a
deny-list, silently deny nothing)."""

from __future__ import annotations

import difflib

from .catalog import Catalog
from .errors import ConfigError
from .models import JobSpec


def known_names(catalog: Catalog) -> set[str]:
    """What an allow- or deny-list entry may name: `provider/model`, a bare model id, or a provider."""
    return {n for m in catalog for n in (m.key, m.model)} | set(catalog.providers)


def _unknown(option: str, name: str, names: set[str]) -> ConfigError:
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `llmbatch models` lists the catalog"
    return ConfigError(f"{option}: unknown model or provider {name!r}{hint}")


def check_spec_names(spec: JobSpec, catalog: Catalog) -> None:
    """Raise ConfigError (exit 2) naming the first unknown entry and the closest known names."""
    names = known_names(catalog)
    if spec.model is not None and catalog.find(spec.model) is None and not any(m.model == spec.model for m in catalog):
        raise _unknown("--model", spec.model, {n for m in catalog for n in (m.key, m.model)})
    for option, entries in (("--models", spec.models), ("--deny", spec.deny)):
        for name in entries or ():
            if name not in names:
                raise _unknown(option, name, names)
