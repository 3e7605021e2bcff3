"""route(): from a task, its request, the catalog and observed health to an ordered list of candidates.

A pure function: credentials, health and the clock are passed in, so the same inputs always give the same
decision and `llmbatch route --explain` shows exactly what the engine will do.

Rules, in the order they are checked (the first one a model fails is the reason it is rejected):
 1. pin / allow-list: `task.model` keeps only that model (a bare id served by several providers keeps all of
    them); otherwise `task.models` (entries `provider/model` or bare ids) restricts the set.
 2. deny-list (job level, same entry forms). Allow- and deny-list entries may also name a whole provider (`groq`).
 3. status: deprecated and retired models are never routed to, unless pinned (then allowed, with a warning).
    A model whose deprecation (shutdown) date has passed is retired, whatever its status says.
 4. credentials: the model's provider must be in `credentials` (see providers.available_credentials).
 5. tier >= the line's min_tier, else the job's, else DEFAULT_MIN_TIER for the task type. A pin skips it.
 6. capabilities the request needs:
    - image parts need "vision";
    - a system/developer message needs "system_role", or a `system_role` quirk the adapter applies
      ("merge_into_user" or "developer");
    - a schema (extract) needs "json_schema", or the `no_response_format` quirk: then the adapter leaves
      response_format out and relies on the schema that prompts.py always writes into the system message;
      the validator and the escalation cascade catch what the model gets wrong;
    - a temperature on a model without "temperature" is dropped by the adapter, never a reason to reject.
 7. max output: the model must allow the request's max_output_tokens.
 8. context: estimated input tokens + completion cap <= context window. The expected count, not the upper
    bound: the bound is up to 4x the real count and would turn away models that fit; a rare miss comes back
    as a reroute error and the next candidate is tried.
 9. long-context pricing: a model's price_tiers price estimates and bounds at the tier the input falls in
    (the bound at the dearest tier the input's upper bound could reach), so no model is turned away for it.
10. max cost per task: estimated cost <= the cap.
11. health: a model (or its whole provider) cooling down after a 429 is set aside. If that leaves nothing,
    the cooling models come back as candidates with a warning: waiting out a cooldown beats skipping the task.

Candidates are ordered by the estimated cost of THIS request, then by observed latency (unknown latency
sorts last, so a proven model wins a tie), then by model key.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from .catalog import Catalog, ModelInfo
from .catalog.pricing import estimate_picos, upper_bound_picos
from .models import DEFAULT_MIN_TIER, ChatRequest, TaskLine, Tier
from .money import exact_usd
from .tokens import (
    IMAGE_TOKENS_MAX,
    IMAGE_TOKENS_TYPICAL,
    expected_output_tokens,
    measure_input,
)

SYSTEM_ROLE_ADAPTATIONS = frozenset({"merge_into_user", "developer"})


@dataclass(frozen=True)
class Candidate:
    model: ModelInfo
    estimated_picos: int  # expected cost of this request: in_est x input price + out_est x output price (exact)
    upper_bound_picos: int  # what the budget reservation holds for one attempt
    input_tokens_est: int
    input_tokens_upper: int
    output_tokens_est: int  # expected billed output: visible answer + expected reasoning, within the cap
    completion_cap: int  # max_output_tokens (+ the reasoning budget on reasoning models), within the model's max
    first: bool  # the cheapest candidate (the one the engine tries first)
    cheapest_picos: int  # the first candidate's estimate
    notes: tuple[str, ...] = ()  # how the adapter adapts the request for this model

    @property
    def reason(self) -> str:
        """Why it is a candidate, for `route --explain` and plans. Built on demand: the engine routes every
        task and never reads it, and formatting money is a noticeable share of routing."""
        m = self.model
        if self.first:
            why = f"cheapest eligible: {m.tier.value} tier, est {exact_usd(self.estimated_picos)}"
        else:
            why = (
                f"eligible: {m.tier.value} tier, est {exact_usd(self.estimated_picos)} "
                f"(+{exact_usd(self.estimated_picos - self.cheapest_picos)})"
            )
        return why + ("; " + ", ".join(self.notes) if self.notes else "")


@dataclass(frozen=True)
class Rejection:
    model: ModelInfo
    reason: str
    # Set only when money or health is the sole obstacle (rules "max_cost", "cooldown"): the model fits the
    # request, so its cost means something. None for every other rule.
    estimated_picos: int | None
    rule: str = ""  # stable name of the failed rule ("context", "tier", "max_cost", ...) for summaries


@dataclass(frozen=True)
class RouteDecision:
    candidates: tuple[Candidate, ...]  # eligible, cheapest first
    rejected: tuple[Rejection, ...]
    warnings: tuple[str, ...]

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def rejection_summary(self) -> str:
        """One line for a task nobody can serve, e.g. 'no eligible model: context (9), no vision (3)'."""
        counts: dict[str, int] = {}
        for r in self.rejected:
            label = r.rule or r.reason
            counts[label] = counts.get(label, 0) + 1
        parts = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"no eligible model: {parts}" if parts else "no eligible model: the catalog is empty"


@dataclass
class Health:
    """Observed state of models, passed in so routing stays pure. Keys are `provider/model`, or a provider name
    for a cooldown that covers every model of that provider."""

    cooldown_until: dict[str, float] = field(default_factory=dict)  # key -> epoch seconds
    latency_ms: dict[str, float] = field(default_factory=dict)  # model key -> observed mean latency

    def cooling(self, key: str, now: float) -> float | None:
        """Seconds left in `key`'s cooldown, or None when it is not cooling."""
        until = self.cooldown_until.get(key)
        if until is None or until <= now:
            return None
        return until - now


def _names(model: ModelInfo) -> tuple[str, str, str]:
    """What an allow- or deny-list entry can name a model by: its key, its bare id, or its provider."""
    return model.key, model.model, model.provider


def _listed(model: ModelInfo, entries: frozenset[str]) -> bool:
    return any(name in entries for name in _names(model))


@dataclass(frozen=True)
class _Needs:
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
    size = measure_input(msgs, json_schema=request.json_schema)  # images are priced per model in _estimate
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


@dataclass(frozen=True)
class _Estimate:
    in_est: int
    in_upper: int
    out_est: int
    cap: int
    picos: int
    upper_picos: int


def _estimate(model: ModelInfo, needs: _Needs) -> _Estimate:
    in_est, in_upper = needs.text_est, needs.text_upper
    if needs.images:
        img_typ = int(model.quirks.get("image_tokens", IMAGE_TOKENS_TYPICAL))
        img_max = max(int(model.quirks.get("image_tokens_max", IMAGE_TOKENS_MAX)), img_typ)
        in_est += needs.images * img_typ
        in_upper += needs.images * img_max
    cap = needs.max_output
    if model.reasoning:
        cap += needs.reasoning_budget or model.reasoning_budget_tokens
    cap = min(cap, model.max_output_tokens)
    out_est = min(needs.out_est + (model.expected_reasoning_tokens if model.reasoning else 0), cap)
    return _Estimate(
        in_est, in_upper, out_est, cap, estimate_picos(model, in_est, out_est), upper_bound_picos(model, in_upper, cap)
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


@dataclass(frozen=True)
class _Shape:
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
) -> tuple[tuple[ModelInfo, bool, tuple[str, str] | None, tuple[str, ...]], ...]:
    """(model, pinned, failed static rule or None, adaptation notes) for every model in key order. Pure in its
    arguments, so cached: a job's tasks share a handful of shapes, and these checks were a third of routing's
    time. A Catalog is immutable and hashes by identity."""
    out = []
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
        out.append((model, pinned, failed, _adaptations(model, shape) if failed is None else ()))
    return tuple(out)


def _check_sized(model: ModelInfo, est: _Estimate, max_cost: int | None) -> tuple[str, str] | None:
    """(rule, reason) for the first rule that depends on this request's size; None when it passes them."""
    need = est.in_est + est.cap
    if need > model.context_window:
        return "context", f"context {model.context_window:,} < {need:,} needed"
    if max_cost is not None and est.picos > max_cost:
        return "max_cost", f"est {exact_usd(est.picos)} > max cost per task {exact_usd(max_cost)}"
    return None


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


def _resolve_pin(name: str, catalog: Catalog) -> frozenset[str]:
    """Keys a pin names: an exact `provider/model`, else every provider serving that bare id."""
    exact = frozenset(m.key for m in catalog if m.key == name)
    return exact or frozenset(m.key for m in catalog if m.model == name)


def route(
    task: TaskLine,
    request: ChatRequest,
    catalog: Catalog,
    *,
    credentials: set[str] | frozenset[str],
    health: Health | None = None,
    deny: frozenset[str] = frozenset(),
    job_min_tier: Tier | None = None,
    max_cost_per_task_picos: int | None = None,
    now: float | None = None,
) -> RouteDecision:
    now = time.time() if now is None else now
    health = health or Health()
    today = datetime.fromtimestamp(now, tz=timezone.utc).date()
    min_tier = task.min_tier or job_min_tier or DEFAULT_MIN_TIER[task.task]
    needs = _needs(task, request)
    warnings: list[str] = []

    pinned_keys: frozenset[str] | None = None
    allow: frozenset[str] | None = None
    if task.model:
        pinned_keys = _resolve_pin(task.model, catalog)
        allow = pinned_keys
        if not pinned_keys:
            warnings.append(f"pinned model {task.model!r} is not in the catalog; `llmbatch models` lists it")
    elif task.models:
        allow = frozenset(task.models)
        for entry in task.models:
            if not any(entry in _names(m) for m in catalog):
                warnings.append(f"allow-list entry {entry!r} matches no model in the catalog")

    eligible: list[tuple[ModelInfo, _Estimate, tuple[str, ...]]] = []
    cooling: list[tuple[ModelInfo, _Estimate, tuple[str, ...], float]] = []
    rejected: list[Rejection] = []
    shape = _Shape(needs.images > 0, needs.system, needs.schema, needs.max_output, request.temperature is not None)
    verdicts = _static_verdicts(
        catalog, shape, pinned_keys, allow, frozenset(deny), frozenset(credentials), min_tier, today
    )
    any_cooling = bool(health.cooldown_until)
    for model, pinned, failed, notes in verdicts:
        est = None
        if failed is None:
            est = _estimate(model, needs)
            failed = _check_sized(model, est, max_cost_per_task_picos)
        if failed is None:
            assert est is not None  # estimated above whenever no static rule failed
            left = _cooling_left(health, model, now) if any_cooling else None
            if left is not None:
                cooling.append((model, est, notes, left))
                continue
            eligible.append((model, est, notes))
            if pinned and model.status_on(today) != "active":
                warnings.append(f"pinned model {model.key} is {_status_note(model, today)}; it may stop working")
            if pinned and model.tier.rank < min_tier.rank:
                warnings.append(
                    f"pinned model {model.key} is tier {model.tier.value}, below the {min_tier.value} asked for"
                )
            continue
        rule, reason = failed
        rejected.append(Rejection(model, reason, est.picos if rule == "max_cost" and est else None, rule))

    if not eligible and cooling:
        soonest = min(left for *_, left in cooling)
        warnings.append(f"every eligible model is cooling down; the first is free again in {soonest:.0f} s")
        eligible = [(m, e, n) for m, e, n, _ in cooling]
    else:
        rejected += [Rejection(m, f"cooling down {left:.0f} s", e.picos, "cooldown") for m, e, _, left in cooling]

    inf = float("inf")
    latency = health.latency_ms
    eligible.sort(key=lambda men: (men[1].picos, latency.get(men[0].key, inf), men[0].key))
    cheapest = eligible[0][1].picos if eligible else 0
    candidates = [
        Candidate(
            model, est.picos, est.upper_picos, est.in_est, est.in_upper, est.out_est, est.cap, i == 0, cheapest, notes
        )
        for i, (model, est, notes) in enumerate(eligible)
    ]
    rejected.sort(key=lambda r: r.model.key)
    return RouteDecision(tuple(candidates), tuple(rejected), tuple(warnings))


def escalation_order(decision: RouteDecision, failed: ModelInfo) -> list[Candidate]:
    """The cascade after an invalid output: candidates of a strictly higher tier than `failed`, cheapest first."""
    return [c for c in decision.candidates if c.model.tier.rank > failed.tier.rank]
