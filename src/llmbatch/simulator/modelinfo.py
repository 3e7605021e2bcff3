"""Which models the simulator serves, and the behaviour each one gets from its name family.

Limits (context window, max output, vision, tier) come from the builtin catalog, retired models included:
the simulator imitates the time those were live. API rejections (o1 system role, max_tokens, ...) are
derived from the model *name*, like the real APIs do, and never from the catalog's quirks, so that an
adapter that trusts a wrong quirk fails here as it would against the provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_O_SERIES = re.compile(r"^o[1-9](?:-|$)")
# o1-preview and o1-mini predate the developer role and structured outputs.
_LEGACY_O1 = re.compile(r"^o1-(?:preview|mini)(?:-|$)")
_GEMINI_THINKING = re.compile(r"^gemini-(?:2\.5|[3-9])|thinking")

# Limits for models named only in `extra_models` (no catalog entry): generous, so they fail nothing.
_EXTRA_CONTEXT = 128_000
_EXTRA_MAX_OUTPUT = 16_384


@dataclass(frozen=True)
class SimModel:
    id: str
    api: str | None  # "openai" | "anthropic" | "gemini"; None = served on every API (extra_models)
    tier: str
    context_window: int
    max_output_tokens: int
    vision: bool

    @property
    def reasoning(self) -> bool:
        """OpenAI o-series: hidden reasoning tokens, max_completion_tokens only, temperature fixed at 1."""
        return bool(_O_SERIES.match(self.id))

    @property
    def legacy_o1(self) -> bool:
        """o1-preview / o1-mini: no system or developer role, no response_format."""
        return bool(_LEGACY_O1.match(self.id))

    @property
    def thinking(self) -> bool:
        """Gemini thinking models report thoughtsTokenCount."""
        return self.id.startswith("gemini") and bool(_GEMINI_THINKING.search(self.id))


@lru_cache(maxsize=1)
def _catalog_models() -> dict[str, SimModel]:
    from ..catalog import builtin_catalog

    out: dict[str, SimModel] = {}
    for m in builtin_catalog():
        out[m.model] = SimModel(
            id=m.model,
            api=m.api,
            tier=m.tier.value,
            context_window=m.context_window,
            max_output_tokens=m.max_output_tokens,
            vision=m.has("vision"),
        )
    return out


class ModelRegistry:
    """Lookup of a bare model id on one API. Built once per config (extra_models can change at runtime)."""

    def __init__(self, extra_models: dict[str, str]):
        self._models = dict(_catalog_models())
        for name, tier in extra_models.items():
            base = self._models.get(name)
            if base is not None:
                self._models[name] = SimModel(
                    base.id, base.api, tier, base.context_window, base.max_output_tokens, base.vision
                )
            else:
                self._models[name] = SimModel(name, None, tier, _EXTRA_CONTEXT, _EXTRA_MAX_OUTPUT, True)

    def find(self, api: str, name: str) -> SimModel | None:
        m = self._models.get(name)
        if m is None or (m.api is not None and m.api != api):
            return None
        return m

    def names(self) -> list[str]:
        return sorted(self._models)
