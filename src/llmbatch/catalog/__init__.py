"""The model catalog: a shipped data file (models.json) plus user overrides.

Entries are keyed by `provider/model`; a bare model id works wherever it is unambiguous.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any, Iterable, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import CatalogError
from ..models import Tier

CAPABILITIES: tuple[str, ...] = ("vision", "json_schema", "system_role", "tools", "temperature")
ApiKind = Literal["openai", "anthropic", "gemini"]
# A price of p USD per 1M tokens is p x PICOS_PER_TOKEN_PER_MTOK pico-dollars per token (money.py).
PICOS_PER_TOKEN_PER_MTOK = 10**6
_PRICE_FIELDS = ("input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok", "output_per_mtok")


def _decimal_price(v):
    if isinstance(v, float):
        return Decimal(repr(v))
    return v


@dataclass(frozen=True)
class Rates:
    """Pico-dollars per token for one price tier and channel: whole numbers, so costs are exact integers."""

    input: int
    cached: int
    cache_write: int
    output: int

    @property
    def dearest_input(self) -> int:
        return max(self.input, self.cached, self.cache_write)


class PriceTier(BaseModel):
    """Long-context pricing: a request whose input exceeds `above_input_tokens` is billed, input and output,
    at these prices (Anthropic's and Gemini's rule). A model may have any number of tiers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above_input_tokens: int = Field(gt=0)
    input_per_mtok: Decimal = Field(ge=0)
    cached_input_per_mtok: Decimal | None = Field(default=None, ge=0)  # None: this tier's input price
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)  # None: this tier's input price
    output_per_mtok: Decimal = Field(ge=0)

    @field_validator(*_PRICE_FIELDS, mode="before")
    @classmethod
    def _no_float_prices(cls, v):
        return _decimal_price(v)

    def public_dict(self) -> dict[str, Any]:
        return {
            "above_input_tokens": self.above_input_tokens,
            "input_per_mtok": self.input_per_mtok,
            "cached_input_per_mtok": self.cached_input_per_mtok,
            "cache_write_per_mtok": self.cache_write_per_mtok,
            "output_per_mtok": self.output_per_mtok,
        }


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
    input_per_mtok: Decimal = Field(ge=0)
    cached_input_per_mtok: Decimal | None = Field(default=None, ge=0)  # None: cached tokens cost the full input price
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)  # None: cache writes cost the full input price
    output_per_mtok: Decimal = Field(ge=0)
    price_tiers: tuple[PriceTier, ...] = ()  # long-context prices, by ascending above_input_tokens
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

    @field_validator(
        "input_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "output_per_mtok",
        "batch_discount",
        mode="before",
    )
    @classmethod
    def _no_float_prices(cls, v):
        return _decimal_price(v)

    @field_validator("price_tiers", mode="after")
    @classmethod
    def _sorted_tiers(cls, v):
        tiers = tuple(sorted(v, key=lambda t: t.above_input_tokens))
        if len({t.above_input_tokens for t in tiers}) < len(tiers):
            raise ValueError("two price_tiers have the same above_input_tokens")
        return tiers

    @model_validator(mode="after")
    def _exact_in_picos(self):
        """Every price, at every tier and channel, must be a whole number of pico-dollars per token (at most
        6 decimals per 1M tokens, and the batch price too): then no cost is ever rounded."""
        factors = [Decimal(1)] + ([self.batch_discount] if self.batch_discount is not None else [])
        prices = [(f, getattr(self, f)) for f in _PRICE_FIELDS]
        prices += [
            (f"price_tiers[{t.above_input_tokens}].{f}", getattr(t, f)) for t in self.price_tiers for f in _PRICE_FIELDS
        ]
        for name, p in prices:
            for factor in factors:
                if p is not None and (p * factor * PICOS_PER_TOKEN_PER_MTOK) % 1:
                    where = f"{name} {p}" + (f" x batch_discount {factor}" if factor != 1 else "")
                    raise ValueError(
                        f"{where} is finer than the ledger's unit ($0.000001 per 1M tokens = "
                        f"one pico-dollar per token); round the price to 6 decimals"
                    )
        return self

    @field_validator("capabilities", mode="before")
    @classmethod
    def _known_capabilities(cls, v):
        caps = frozenset(v or ())
        unknown = caps - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {', '.join(CAPABILITIES)}")
        return caps

    @cached_property
    def _rate_table(self) -> tuple[tuple[int, Rates, Rates | None], ...]:
        """(above_input_tokens, online rates, batch rates) per tier, base tier first (threshold 0). Cached in
        the instance (not a field: dumps and equality are unchanged)."""

        def rates(src, factor: Decimal) -> Rates:
            inp = src.input_per_mtok
            vals = (
                inp,
                inp if src.cached_input_per_mtok is None else src.cached_input_per_mtok,
                inp if src.cache_write_per_mtok is None else src.cache_write_per_mtok,
                src.output_per_mtok,
            )
            return Rates(*(int(v * factor * PICOS_PER_TOKEN_PER_MTOK) for v in vals))

        out = []
        for above, src in [(0, self), *((t.above_input_tokens, t) for t in self.price_tiers)]:
            out.append(
                (
                    above,
                    rates(src, Decimal(1)),
                    rates(src, self.batch_discount) if self.batch_discount is not None else None,
                )
            )
        return tuple(out)

    @cached_property
    def online_tier_rates(self) -> tuple[tuple[int, Rates], ...]:
        """(above_input_tokens, online rates) per tier, base tier first (threshold 0): for callers that price
        many requests on one model and read the table once (routing)."""
        return tuple((above, online) for above, online, _ in self._rate_table)

    @overload
    def rates(self, input_tokens: int, *, batch: Literal[False] = False) -> Rates: ...
    @overload
    def rates(self, input_tokens: int, *, batch: bool) -> Rates | None: ...

    def rates(self, input_tokens: int, *, batch: bool = False) -> Rates | None:
        """The per-token rates that apply to a request with this many input tokens (the highest tier whose
        threshold it exceeds). None for batch on a model without a batch channel."""
        chosen = self._rate_table[0]
        for row in self._rate_table[1:]:
            if input_tokens > row[0]:
                chosen = row
        return chosen[2] if batch else chosen[1]

    def dearest_rates(self, input_tokens: int) -> tuple[int, int]:
        """(dearest input rate, dearest output rate) over the tiers a request of up to `input_tokens` could
        fall in: the upper bound of a call must hold whichever tier the real count lands in."""
        rows = [r for above, r, _ in self._rate_table if above == 0 or input_tokens > above]
        return max(r.dearest_input for r in rows), max(r.output for r in rows)

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

    def status_on(self, today: date) -> str:
        """The status enforced on `today`: past its shutdown date a model is retired, whatever `status` says."""
        if self.deprecation_date is not None and self.deprecation_date <= today:
            return "retired"
        return self.status

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
            # Decimals: printed as exact JSON numbers (money.json_default), never a float round trip.
            "input_per_mtok": self.input_per_mtok,
            "cached_input_per_mtok": self.cached_price,
            "cache_write_per_mtok": self.cache_write_price,
            "output_per_mtok": self.output_per_mtok,
            "batch_discount": self.batch_discount,
            "price_tiers": [t.public_dict() for t in self.price_tiers],
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

    def with_overrides(
        self, models: dict[str, dict[str, Any]] | None = None, providers: dict[str, dict[str, Any]] | None = None
    ) -> "Catalog":
        """A new catalog with entries changed or added (from llmbatch.toml or an imported file)."""
        provs = dict(self.providers)
        for name, fields in (providers or {}).items():
            base = provs[name].model_dump() if name in provs else {"name": name}
            provs[name] = ProviderInfo(**{**base, **fields, "name": name})
        mods = dict(self._models)
        for name, fields in (models or {}).items():
            existing = (
                self.find(name)
                if "/" in name or fields.get("provider") is None
                else self.find(f"{fields['provider']}/{fields.get('model', name)}")
            )
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
