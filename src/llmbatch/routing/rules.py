"""The eligibility rules (see the package docstring for their order) and the per-model fit route() prices from.

Each rule is checked once per model and request shape; the request size is route()'s business."""

from __future__ import annotations

import functools
from datetime import date, datetime, timezone
from typing import NamedTuple

from ..catalog import Catalog, ModelInfo
from ..models import ChatRequest, TaskLine, Tier
from ..tokens import (
    IMAGE_TOKENS_MAX,
    IMAGE_TOKENS_TYPICAL,
    expected_output_tokens,
    measure_input,
)
from .types import Rejection, Health

SYSTEM_ROLE_ADAPTATIONS = frozenset({"merge_into_user", "developer"})


def _names(model: ModelInfo) -> tuple[str, str, str]:
    """What an allow- or deny-list entry can name a model by: its key, its bare id, or its provider."""
    return model.key, model.model, model.provider


def _listed(model: ModelInfo, entries: frozenset[str]) -> bool:
    return any(name in entries for name in _names(model))


class _Needs(NamedTuple):
    """What one request asks of a model, computed once per route() call."""

    images: int
    system: bool
    schema: bool
    max_output: int
    reasoning_budget: int
    text_est: int  # input tokens without images
    text_upper: int
    out_est: int  # expected visible output


def _needs(task: TaskLine, request: ChatRequest) -> _Needs:
    msgs = request.messages
    size = measure_input(msgs, json_schema=request.json_schema)  # images are priced per model in route()
    return _Needs(
        images=size.images,
        system=any(m.get("role") in ("system", "developer") for m in msgs),
        schema=bool(request.json_schema),
        max_output=request.max_output_tokens,
        reasoning_budget=request.reasoning_budget_tokens,
        text_est=size.text_est,
        text_upper=size.text_upper,
        out_est=expected_output_tokens(
            task.task, request.max_output_tokens, size.text_est, task.labels, json_schema=request.json_schema
        ),
    )


class _Fit(NamedTuple):
    """A model that passed the static rules for a shape, with what the size-dependent rules (context, tier
    prices, max cost) and the estimates need of it, read out of the catalog once per shape as plain integers:
    route() runs for every task over every model, and catalog method calls there were most of its CPU."""

    model: ModelInfo
    key: str
    notes: tuple[str, ...]  # adaptation notes
    pin_warnings: tuple[str, ...]  # what a pin on a deprecated or lower-tier model warns
    image_tokens: int  # per image, expected (catalog quirk, else IMAGE_TOKENS_TYPICAL)
    image_tokens_max: int  # per image, at most (quirk, else IMAGE_TOKENS_MAX; never below the expected)
    reasoning: bool
    reasoning_budget: int  # the model's own budget, used when the request sets none
    expected_reasoning: int  # 0 on a model that does not reason
    max_output: int
    context_window: int
    rate_in: int  # base tier, online: pico-dollars per input (uncached) and output token
    rate_out: int
    dearest_in: int  # base tier: the dearest input rate (uncached, cached, cache write) and the output rate
    dearest_out: int
    tiers: tuple[tuple[int, int, int, int, int], ...]  # long-context tiers: (above, in, out, dearest in, out)


def _fit(model: ModelInfo, notes: tuple[str, ...], pin_warnings: tuple[str, ...]) -> _Fit:
    img_typ = int(model.quirks.get("image_tokens", IMAGE_TOKENS_TYPICAL))
    (_, base), *tiers = model.online_tier_rates
    return _Fit(
        model=model,
        key=model.key,
        notes=notes,
        pin_warnings=pin_warnings,
        image_tokens=img_typ,
        image_tokens_max=max(int(model.quirks.get("image_tokens_max", IMAGE_TOKENS_MAX)), img_typ),
        reasoning=model.reasoning,
        reasoning_budget=model.reasoning_budget_tokens,
        expected_reasoning=model.expected_reasoning_tokens if model.reasoning else 0,
        max_output=model.max_output_tokens,
        context_window=model.context_window,
        rate_in=base.input,
        rate_out=base.output,
        dearest_in=base.dearest_input,
        dearest_out=base.output,
        tiers=tuple((above, r.input, r.output, r.dearest_input, r.output) for above, r in tiers),
    )


def _status_note(model: ModelInfo, today: date) -> str:
    when = model.deprecation_date
    if when is None:
        return model.status
    if model.status != "retired" and when <= today:
        return f"retired: shutdown date {when.isoformat()} has passed"
    return f"{model.status} {when.isoformat()}"


def _system_adaptation(model: ModelInfo) -> str | None:
    """How the adapter sends a system message to a model without the system role, or None if it cannot."""
    how = model.quirks.get("system_role")
    return how if how in SYSTEM_ROLE_ADAPTATIONS else None


class _Shape(NamedTuple):
    """What the request-size-independent rules look at: hashable, so verdicts are cached per shape."""

    images: bool
    system: bool
    schema: bool
    max_output: int
    temperature: bool  # the request sets one (some models drop it: an adaptation note)


def _check_static(
    model: ModelInfo,
    shape: _Shape,
    *,
    pinned: bool,
    allow: frozenset[str] | None,
    deny: frozenset[str],
    credentials: frozenset[str],
    catalog: Catalog,
    min_tier: Tier,
    today: date,
) -> tuple[str, str] | None:
    """(rule, reason) for the first request-size-independent rule `model` fails; None when it passes them.
    Checked before estimating, so models that fail here cost no arithmetic."""
    if allow is not None and not _listed(model, allow):
        return "allow_list", "not in allow-list"
    if _listed(model, deny):
        return "deny", "denied"
    if model.status_on(today) != "active" and not pinned:
        return "status", _status_note(model, today)
    if model.provider not in credentials:
        env = catalog.providers[model.provider].key_env if model.provider in catalog.providers else None
        return "credentials", f"no credentials (set {env})" if env else "no credentials"
    if model.tier.rank < min_tier.rank and not pinned:
        return "tier", f"tier {model.tier.value} < {min_tier.value}"
    if shape.images and not model.has("vision"):
        return "vision", "no vision"
    if shape.system and not model.has("system_role") and _system_adaptation(model) is None:
        return "system_role", "no system role, and no quirk to adapt it"
    if shape.schema and not model.has("json_schema") and not model.quirks.get("no_response_format"):
        return "json_schema", "no JSON schema output"
    if model.max_output_tokens < shape.max_output:
        return "max_output", f"max output {model.max_output_tokens:,} < {shape.max_output:,} requested"
    return None


def _pin_warnings(model: ModelInfo, min_tier: Tier, today: date) -> tuple[str, ...]:
    out = []
    if model.status_on(today) != "active":
        out.append(f"pinned model {model.key} is {_status_note(model, today)}; it may stop working")
    if model.tier.rank < min_tier.rank:
        out.append(f"pinned model {model.key} is tier {model.tier.value}, below the {min_tier.value} asked for")
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _static_verdicts(
    catalog: Catalog,
    shape: _Shape,
    pinned_keys: frozenset[str] | None,
    allow: frozenset[str] | None,
    deny: frozenset[str],
    credentials: frozenset[str],
    min_tier: Tier,
    today: date,
) -> tuple[Rejection | _Fit, ...]:
    """For every model in key order, its Rejection when it fails a static rule, else its _Fit.
    Pure in its arguments, so cached: a job's tasks share a handful of shapes, and these checks were a third
    of routing's time. The rejections are immutable and shared by every decision of the shape. A Catalog is
    immutable and hashes by identity."""
    out: list[Rejection | _Fit] = []
    for model in catalog.by_key():
        pinned = pinned_keys is not None and model.key in pinned_keys
        failed = _check_static(
            model,
            shape,
            pinned=pinned,
            allow=allow,
            deny=deny,
            credentials=credentials,
            catalog=catalog,
            min_tier=min_tier,
            today=today,
        )
        if failed is None:
            warn = _pin_warnings(model, min_tier, today) if pinned else ()
            out.append(_fit(model, _adaptations(model, shape), warn))
        else:
            rule, reason = failed
            out.append(Rejection(model, reason, None, rule))
    return tuple(out)


def _adaptations(model: ModelInfo, shape: _Shape) -> tuple[str, ...]:
    notes = []
    if shape.system and not model.has("system_role"):
        notes.append(
            "system sent as developer" if _system_adaptation(model) == "developer" else "system merged into user"
        )
    if shape.schema and not model.has("json_schema"):
        notes.append("schema in prompt only")
    if shape.temperature and (not model.has("temperature") or model.quirks.get("fixed_temperature")):
        notes.append("temperature dropped")
    return tuple(notes)


def _cooling_left(health: Health, model: ModelInfo, now: float) -> float | None:
    """Seconds until neither the model nor its provider is cooling down; None when neither is."""
    lefts = [s for s in (health.cooling(model.key, now), health.cooling(model.provider, now)) if s is not None]
    return max(lefts) if lefts else None


@functools.lru_cache(maxsize=1024)
def _resolve_pin(name: str, catalog: Catalog) -> frozenset[str]:
    """Keys a pin names: an exact `provider/model`, else every provider serving that bare id."""
    exact = frozenset(m.key for m in catalog if m.key == name)
    return exact or frozenset(m.key for m in catalog if m.model == name)


@functools.lru_cache(maxsize=64)
def _catalog_names(catalog: Catalog) -> frozenset[str]:
    """Every name an allow-list entry can match in the catalog (see _names)."""
    return frozenset(name for m in catalog for name in _names(m))


_day_cache: tuple[float, float, date] = (0.0, 0.0, date.min)  # [start, end) of a UTC day in epoch seconds


def _utc_date(now: float) -> date:
    """The UTC date of `now` (epoch seconds), as datetime.fromtimestamp gives it, remembered until that day
    ends: route() runs for every task, nearly always on the day of the previous call. The cached range stops
    1 ms before midnight because fromtimestamp rounds to the microsecond; there it is computed every time."""
    global _day_cache
    start, end, day = _day_cache
    if start <= now < end:
        return day
    day = datetime.fromtimestamp(now, tz=timezone.utc).date()
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
    _day_cache = (start, start + 86_400 - 0.001, day)
    return day
