"""Turn LiteLLM's `model_prices_and_context_window.json` into a catalog document (the models.json shape).

LiteLLM prices are USD per token, written as JSON floats (1.5e-07). We parse them straight into Decimal
(json parse_float=Decimal, or repr() of an already-parsed float, which is the shortest string that round-trips),
so "1.5e-07" becomes exactly "0.15" per 1M tokens with no binary rounding on the way.

What is imported: chat-mode entries of providers we can call (OpenAI-compatible, Anthropic, Gemini) that answer
in text, with input and output prices above zero and a usable context window. `mode: chat` alone is not
enough: the file labels image (FLUX), music (Lyria), speech and guard/classifier models as chat too, and lists
$0 experimental models; a router would take any of those for the cheapest chat model. Everything else is
counted under "_import"."skipped". Long-context tiers (`input_cost_per_token_above_200k_tokens` and kin),
cache prices, batch prices and deprecation dates are imported. A price finer than the ledger's unit (one
pico-dollar per token, i.e. 6 decimals per 1M tokens) is rounded UP to it, so no bill is understated.
Models already in our catalog keep their curated tier, quirks, reasoning estimates and notes; the prices,
limits and capabilities come from the file.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import CatalogError
from ..models import Tier
from . import Catalog, builtin_catalog

PER_MTOK = Decimal(1_000_000)

# LiteLLM provider name -> (our provider name, api, base_url, key env var). Only providers whose API our adapters
# speak; Bedrock, Vertex and Azure need their own auth and are skipped.
PROVIDERS: dict[str, tuple[str, str, str, str]] = {
    "openai": ("openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "gemini": ("gemini", "gemini", "https://generativelanguage.googleapis.com", "GEMINI_API_KEY"),
    "mistral": ("mistral", "openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "groq": ("groq", "openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "together_ai": ("together", "openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "deepseek": ("deepseek", "openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "xai": ("xai", "openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    "fireworks_ai": ("fireworks", "openai", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    "openrouter": ("openrouter", "openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "deepinfra": ("deepinfra", "openai", "https://api.deepinfra.com/v1/openai", "DEEPINFRA_API_KEY"),
    "cerebras": ("cerebras", "openai", "https://api.cerebras.ai/v1", "CEREBRAS_API_KEY"),
}

# Tier heuristic for models we have not curated: the blended price of a typical bulk request, 3 input tokens
# per output token, in USD per 1M tokens. The cut-offs put every model of the builtin catalog in its curated
# tier (gpt-4o-mini 0.26 -> mini, gpt-4.1-mini 0.70 and claude-3-5-haiku 1.60 -> standard, gpt-4.1 3.50 ->
# frontier); price tracks capability only roughly, so override `tier` in llmbatch.toml where it guesses wrong.
MINI_BELOW = Decimal("0.40")
STANDARD_BELOW = Decimal("3.00")

# Routing estimates for reasoning models we have not curated (hidden reasoning per request, and the extra
# completion budget allowed for it).
DEFAULT_EXPECTED_REASONING_TOKENS = 512
DEFAULT_REASONING_BUDGET_TOKENS = 4096

_STATUS_RANK = {"active": 0, "deprecated": 1, "retired": 2}

# The smallest context window worth routing chat work to (a 512-token prompt-guard classifier is not a chat model).
MIN_CONTEXT_WINDOW = 2048
# Names of models that the file files under mode "chat" but that do not answer chat in text.
_NOT_TEXT_CHAT = re.compile(
    r"guard|flux|lyria|imagen|dall-e|stable-?diffusion|sdxl|-tts\b|tts-|\baudio|"
    r"embed|moderation|rerank|whisper|transcribe|realtime|image",
    re.IGNORECASE,
)
# Keys that price non-text output: the model makes pictures, sound or video.
_NON_TEXT_OUTPUT_KEYS = (
    "output_cost_per_image",
    "output_cost_per_pixel",
    "output_cost_per_audio_token",
    "output_cost_per_second",
    "output_cost_per_video_per_second",
    "supports_image_size",
)
# Long-context tier keys, e.g. input_cost_per_token_above_200k_tokens (not the _priority/_batches/_flex variants).
_TIER_KEY = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost|"
    r"cache_creation_input_token_cost)_above_(\d+)k_tokens$"
)
_TIER_FIELD = {
    "input_cost_per_token": "input_per_mtok",
    "output_cost_per_token": "output_per_mtok",
    "cache_read_input_token_cost": "cached_input_per_mtok",
    "cache_creation_input_token_cost": "cache_write_per_mtok",
}
_UNIT = Decimal("0.000001")  # one pico-dollar per token, in USD per 1M tokens
_PRICE_FIELDS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok")


def per_mtok(value: Any) -> Decimal:
    """A LiteLLM per-token price as an exact Decimal per 1M tokens."""
    if isinstance(value, bool):
        raise CatalogError(f"not a price: {value!r}")
    if isinstance(value, float):
        value = repr(value)
    try:
        d = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, TypeError, ValueError):
        raise CatalogError(f"not a price: {value!r}") from None
    if not d.is_finite() or d < 0:
        raise CatalogError(f"not a price: {value!r}")
    return d * PER_MTOK


def to_unit(d: Decimal) -> Decimal:
    """A per-1M price on the ledger's grid (6 decimals), rounded up when it is finer."""
    return d.quantize(_UNIT, rounding=ROUND_CEILING) if d % _UNIT else d


def not_text_chat(key: str, spec: Mapping[str, Any]) -> str | None:
    """Why a `mode: chat` entry is not a text chat model, or None when it is one."""
    outputs = spec.get("supported_output_modalities")
    if isinstance(outputs, list) and "text" not in outputs:
        return "no text output"
    if any(spec.get(k) for k in _NON_TEXT_OUTPUT_KEYS) or _NOT_TEXT_CHAT.search(key):
        return "not a text chat model (image, audio, music, embedding or guard)"
    return None


def _tiers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long-context tiers of an entry, each with its input and output price (cache prices when given)."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in spec.items():
        m = _TIER_KEY.match(key)
        if m is None or value is None:
            continue
        found.setdefault(int(m.group(2)) * 1000, {})[_TIER_FIELD[m.group(1)]] = value
    tiers = []
    for above, fields in sorted(found.items()):
        if "input_per_mtok" not in fields or "output_per_mtok" not in fields:
            continue
        tiers.append(
            {
                "above_input_tokens": above,
                **{f: decimal_string(to_unit(per_mtok(v))) for f, v in sorted(fields.items())},
            }
        )
    return tiers


def decimal_string(d: Decimal) -> str:
    """'0.150000' -> '0.15', '1E+1' -> '10': the shortest plain notation."""
    s = format(d.normalize(), "f")
    return s


def guess_tier(input_per_mtok: Decimal, output_per_mtok: Decimal) -> Tier:
    blended = (3 * input_per_mtok + output_per_mtok) / 4
    if blended < MINI_BELOW:
        return Tier.mini
    if blended < STANDARD_BELOW:
        return Tier.standard
    return Tier.frontier


def status_from_date(deprecation_date: date | None, today: date) -> str:
    """LiteLLM's deprecation_date is the provider's shutdown date: past means retired, future means announced."""
    if deprecation_date is None:
        return "active"
    return "retired" if deprecation_date <= today else "deprecated"


def _read(path_or_dict: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    path = Path(path_or_dict)
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise CatalogError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise CatalogError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a JSON object of model entries")
    return data


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)) and value == int(value):
        return int(value)
    return None


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _model_id(key: str, litellm_provider: str) -> str:
    prefix = f"{litellm_provider}/"
    return key[len(prefix) :] if key.startswith(prefix) else key


def _entry(model_id: str, provider: str, api: str, spec: Mapping[str, Any], today: date) -> dict[str, Any] | str:
    """Our model record for one LiteLLM entry, or the reason it is skipped."""
    if spec.get("input_cost_per_token") is None or spec.get("output_cost_per_token") is None:
        return "no per-token price"
    try:
        inp = per_mtok(spec["input_cost_per_token"])
        out = per_mtok(spec["output_cost_per_token"])
        cached = (
            per_mtok(spec["cache_read_input_token_cost"])
            if spec.get("cache_read_input_token_cost") is not None
            else None
        )
        write = (
            per_mtok(spec["cache_creation_input_token_cost"])
            if spec.get("cache_creation_input_token_cost") is not None
            else None
        )
        batch_in = (
            per_mtok(spec["input_cost_per_token_batches"])
            if spec.get("input_cost_per_token_batches") is not None
            else None
        )
        batch_out = (
            per_mtok(spec["output_cost_per_token_batches"])
            if spec.get("output_cost_per_token_batches") is not None
            else None
        )
        tiers = _tiers(spec)
    except CatalogError:
        return "unreadable price"
    if inp <= 0 or out <= 0:
        return "priced at $0 (free or experimental)"
    inp, out = to_unit(inp), to_unit(out)
    cached = to_unit(cached) if cached is not None else None
    write = to_unit(write) if write is not None else None
    context = _int(spec.get("max_input_tokens")) or _int(spec.get("max_tokens"))
    max_out = _int(spec.get("max_output_tokens")) or _int(spec.get("max_tokens"))
    if not context or context <= 0:
        return "no context window"
    if context < MIN_CONTEXT_WINDOW:
        return f"context window under {MIN_CONTEXT_WINDOW} tokens"
    if not max_out or max_out <= 0:
        max_out = context

    # One factor prices both directions (pricing.price), so take the dearer ratio: never understate a batch bill.
    batch = None
    ratios = [b / p for b, p in ((batch_in, inp), (batch_out, out)) if b is not None and p > 0]
    if ratios:
        batch = max(ratios)
        if not _on_grid(batch, [inp, out, cached, write], tiers):
            batch = None  # a batch price off the ledger's grid: no batch channel rather than an inexact bill

    reasoning = bool(spec.get("supports_reasoning"))
    caps = []
    if spec.get("supports_vision"):
        caps.append("vision")
    if spec.get("supports_response_schema"):
        caps.append("json_schema")
    # Absent means LiteLLM does not know; nearly every chat model takes a system message, so only an explicit
    # false (o1-preview, o1-mini) removes it.
    if spec.get("supports_system_messages", True) is not False:
        caps.append("system_role")
    if spec.get("supports_function_calling"):
        caps.append("tools")
    # OpenAI's reasoning models accept only the default temperature; the file has no field for it.
    if not (reasoning and api == "openai" and provider == "openai"):
        caps.append("temperature")

    quirks: dict[str, Any] = {}
    if "system_role" not in caps:
        quirks["system_role"] = "merge_into_user"
    if reasoning and provider == "openai":
        quirks.update(max_tokens_param="max_completion_tokens", fixed_temperature=True)
    if api == "anthropic":
        quirks["max_tokens_required"] = True

    when = _date(spec.get("deprecation_date"))
    return {
        "provider": provider,
        "model": model_id,
        "api": api,
        "tier": guess_tier(inp, out).value,
        "reasoning": reasoning,
        "input_per_mtok": decimal_string(inp),
        "cached_input_per_mtok": decimal_string(cached) if cached is not None else None,
        "cache_write_per_mtok": decimal_string(write) if write is not None else None,
        "output_per_mtok": decimal_string(out),
        "batch_discount": decimal_string(batch) if batch is not None else None,
        "context_window": context,
        "max_output_tokens": max_out,
        "capabilities": caps,
        "quirks": quirks,
        "status": status_from_date(when, today),
        "deprecation_date": when.isoformat() if when else None,
        "price_tiers": tiers,
        "expected_reasoning_tokens": DEFAULT_EXPECTED_REASONING_TOKENS if reasoning else 0,
        "reasoning_budget_tokens": DEFAULT_REASONING_BUDGET_TOKENS if reasoning else 0,
    }


def _on_grid(batch: Decimal, prices: Sequence[Decimal | None], tiers: list[dict[str, Any]]) -> bool:
    """Whether every price times the batch factor is a whole number of the ledger's unit."""
    every = [*prices, *(Decimal(t[f]) for t in tiers for f in t if f != "above_input_tokens")]
    return not any((p * batch) % _UNIT for p in every if p is not None)


def _has_batch_prices(spec: Mapping[str, Any]) -> bool:
    return any(spec.get(k) is not None for k in ("input_cost_per_token_batches", "output_cost_per_token_batches"))


def _keep_curated(entry: dict[str, Any], ours: Catalog, *, file_has_batch: bool = True) -> dict[str, Any]:
    """Our judgement (tier, quirks, reasoning estimates, a known retirement) outlives a price refresh; so does
    a known batch discount when the file has no batch prices for the model (older price files lack them for
    many models that have a batch API), as long as it stays exact at the file's prices."""
    known = ours.find(f"{entry['provider']}/{entry['model']}")
    if known is None or known.key != f"{entry['provider']}/{entry['model']}":
        return entry
    entry = dict(entry)
    entry["tier"] = known.tier.value
    entry["quirks"] = {**entry["quirks"], **known.quirks}
    entry["reasoning"] = entry["reasoning"] or known.reasoning
    if known.reasoning:
        entry["expected_reasoning_tokens"] = known.expected_reasoning_tokens
        entry["reasoning_budget_tokens"] = known.reasoning_budget_tokens
    if _STATUS_RANK[known.status] > _STATUS_RANK[entry["status"]]:
        entry["status"] = known.status
        entry["deprecation_date"] = known.deprecation_date.isoformat() if known.deprecation_date else None
    if known.notes:
        entry["notes"] = known.notes
    if not file_has_batch and entry.get("batch_discount") is None and known.batch_discount is not None:
        prices = [Decimal(entry[k]) for k in _PRICE_FIELDS if entry.get(k) is not None]
        if _on_grid(known.batch_discount, prices, entry.get("price_tiers") or []):
            entry["batch_discount"] = decimal_string(known.batch_discount)
    if not entry.get("price_tiers") and known.price_tiers:  # the file does not know them; we do
        entry["price_tiers"] = [
            {
                k: (str(v) if v is not None and k != "above_input_tokens" else v)
                for k, v in t.public_dict().items()
                if v is not None
            }
            for t in known.price_tiers
        ]
    return entry


def import_litellm(
    path_or_dict: str | Path | Mapping[str, Any],
    *,
    providers: set[str] | None = None,
    existing: Catalog | None = None,
    today: date | None = None,
) -> dict[str, Any]:
    """A catalog document from a LiteLLM price file (a path, or the already-parsed object).

    `providers` keeps only those providers (our names, e.g. {"openai", "groq"}; LiteLLM's names also work).
    `existing` is the catalog whose curated fields win (default: the builtin one); `today` dates statuses.
    """
    data = _read(path_or_dict)
    ours = existing if existing is not None else builtin_catalog()
    today = today or date.today()
    wanted = None
    if providers is not None:
        wanted = {PROVIDERS[p][0] if p in PROVIDERS else p for p in providers}

    models: dict[str, dict[str, Any]] = {}
    used: dict[str, dict[str, Any]] = {}
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for key, spec in data.items():
        if key == "sample_spec" or not isinstance(spec, Mapping):
            continue
        if spec.get("mode") != "chat":
            skip("not a chat model")
            continue
        why_not = not_text_chat(key, spec)
        if why_not is not None:
            skip(why_not)
            continue
        lp = spec.get("litellm_provider")
        if lp not in PROVIDERS:
            skip("provider not supported")
            continue
        provider, api, base_url, key_env = PROVIDERS[lp]
        if wanted is not None and provider not in wanted:
            skip("provider not selected")
            continue
        entry = _entry(_model_id(key, lp), provider, api, spec, today)
        if isinstance(entry, str):
            skip(entry)
            continue
        ident = f"{provider}/{entry['model']}"
        if ident in models:
            skip("duplicate")
            continue
        models[ident] = _keep_curated(entry, ours, file_has_batch=_has_batch_prices(spec))
        if provider in ours.providers:
            used[provider] = ours.providers[provider].model_dump(exclude={"name"})
        else:
            used[provider] = {"api": api, "base_url": base_url, "key_env": key_env}

    return {
        "_comment": "Imported from LiteLLM's model_prices_and_context_window.json by `llmbatch catalog import`. "
        "Prices are USD per 1M tokens.",
        "_import": {"date": today.isoformat(), "imported": len(models), "skipped": dict(sorted(skipped.items()))},
        "providers": dict(sorted(used.items())),
        "models": [models[k] for k in sorted(models)],
    }
