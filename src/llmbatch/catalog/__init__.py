"""The model catalog: a shipped data file (models.json) plus user overrides.

Entries are keyed by `provider/model`; a bare model id works wherever it is unambiguous.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from functools import cached_property
from importlib import resources
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import CatalogError
from ..models import Tier

CAPABILITIES: tuple[str, ...] = ("vision", "json_schema", "system_role", "tools", "temperature")
ApiKind = Literal["openai", "anthropic", "gemini"]
PRICE_SCALE = 10**9  # ModelInfo.price_ints unit: 1e-9 micro-dollars per token


class ProviderInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    api: ApiKind
    base_url: str
    key_env: str | None = None  # env var holding the key; None for keyless local servers (Ollama, vLLM)


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str
    api: ApiKind
    tier: Tier
    reasoning: bool = False
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None  # None: cached tokens cost the full input price
    cache_write_per_mtok: Decimal | None = None  # None: cache writes cost the full input price
    output_per_mtok: Decimal
    batch_discount: Decimal | None = None  # 0.5 = batch channel costs 50%; None = no batch channel
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    capabilities: frozenset[str] = frozenset()
    quirks: dict[str, Any] = Field(default_factory=dict)
    status: Literal["active", "deprecated", "retired"] = "active"
    deprecation_date: date | None = None
    expected_reasoning_tokens: int = 0  # routing estimate of hidden reasoning per request
    reasoning_budget_tokens: int = 0  # extra completion tokens allowed for reasoning
    notes: str | None = None

    @field_validator("input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "output_per_mtok", "batch_discount", mode="before")
    @classmethod
    def _no_float_prices(cls, v):
        if isinstance(v, float):
            return Decimal(repr(v))
        return v

    @field_validator("capabilities", mode="before")
    @classmethod
    def _known_capabilities(cls, v):
        caps = frozenset(v or ())
        unknown = caps - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {', '.join(CAPABILITIES)}")
        return caps

    @cached_property
    def price_ints(self) -> tuple[int, int, int] | None:
        """(input, output, dearest input) in nano-micro-dollars per token, when all are whole numbers of those
        (real price lists are): pricing then uses exact integer arithmetic, several times cheaper than
        Decimal. Cached in the instance (not a field: dumps and equality are unchanged)."""
        dearest = max(self.input_per_mtok, self.cached_price, self.cache_write_price)
        scaled = [p * PRICE_SCALE for p in (self.input_per_mtok, self.output_per_mtok, dearest)]
        if all(x == x.to_integral_value() for x in scaled):
            return tuple(int(x) for x in scaled)
        return None

    @cached_property
    def key(self) -> str:
        """`provider/model`; read many times per routed task, so computed once (the model is frozen)."""
        return f"{self.provider}/{self.model}"

    @property
    def cached_price(self) -> Decimal:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def cache_write_price(self) -> Decimal:
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def public_dict(self) -> dict[str, Any]:
        """The `llmbatch models --json` shape."""
        return {
            "provider": self.provider,
            "model": self.model,
            "tier": self.tier.value,
            "reasoning": self.reasoning,
            "status": self.status,
            "deprecation_date": self.deprecation_date.isoformat() if self.deprecation_date else None,
            "input_per_mtok": float(self.input_per_mtok),
            "cached_input_per_mtok": float(self.cached_price),
            "cache_write_per_mtok": float(self.cache_write_price),
            "output_per_mtok": float(self.output_per_mtok),
            "batch_discount": float(self.batch_discount) if self.batch_discount is not None else None,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "capabilities": sorted(self.capabilities),
            "quirks": self.quirks,
        }


class Catalog:
    """An immutable set of models and the providers that serve them."""

    def __init__(self, models: Iterable[ModelInfo], providers: Iterable[ProviderInfo]):
        self.providers: dict[str, ProviderInfo] = {p.name: p for p in providers}
        self._models: dict[str, ModelInfo] = {}
        self._sorted: list[ModelInfo] | None = None
        for m in models:
            if m.provider not in self.providers:
                raise CatalogError(
                    f"model {m.model!r} names provider {m.provider!r}, which is not configured; "
                    f"add [providers.{m.provider}] with api, base_url and key_env to llmbatch.toml"
                )
            self._models[m.key] = m

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def by_key(self) -> list[ModelInfo]:
        """The models in key order (deterministic rejections and ties), sorted once."""
        if self._sorted is None:
            self._sorted = sorted(self._models.values(), key=lambda m: m.key)
        return self._sorted

    def get(self, name: str) -> ModelInfo:
        """Look a model up by `provider/model` or by a bare, unambiguous model id."""
        if name in self._models:
            return self._models[name]
        matches = [m for m in self._models.values() if m.model == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CatalogError(
                f"model {name!r} is served by several providers ({', '.join(m.provider for m in matches)}); "
                f"name it as provider/model"
            )
        raise CatalogError(f"unknown model {name!r}; `llmbatch models` lists the catalog")

    def find(self, name: str) -> ModelInfo | None:
        try:
            return self.get(name)
        except CatalogError:
            return None

    def with_overrides(self, models: dict[str, dict[str, Any]] | None = None,
                       providers: dict[str, dict[str, Any]] | None = None) -> "Catalog":
        """A new catalog with entries changed or added (from llmbatch.toml or an imported file)."""
        provs = dict(self.providers)
        for name, fields in (providers or {}).items():
            base = provs[name].model_dump() if name in provs else {"name": name}
            provs[name] = ProviderInfo(**{**base, **fields, "name": name})
        mods = dict(self._models)
        for name, fields in (models or {}).items():
            existing = self.find(name) if "/" in name or fields.get("provider") is None else self.find(
                f"{fields['provider']}/{fields.get('model', name)}")
            if existing is not None:
                data = existing.model_dump()
                data.update(fields)
                mods.pop(existing.key, None)
            else:
                data = dict(fields)
                if "/" in name and "provider" not in data:
                    data["provider"], data["model"] = name.split("/", 1)
                data.setdefault("model", name)
            m = ModelInfo(**data)
            mods[m.key] = m
        return Catalog(mods.values(), provs.values())


def _load_document(doc: dict[str, Any]) -> Catalog:
    providers = [ProviderInfo(name=k, **v) for k, v in doc.get("providers", {}).items()]
    models = [ModelInfo(**m) for m in doc["models"]]
    return Catalog(models, providers)


def builtin_catalog() -> Catalog:
    text = resources.files(__package__).joinpath("models.json").read_text("utf-8")
    return _load_document(json.loads(text))
