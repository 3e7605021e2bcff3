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
from typing import NamedTuple, TypeVar

from .catalog import Catalog, ModelInfo
from .models import DEFAULT_MIN_TIER, ChatRequest, TaskLine, Tier
from .money import exact_usd
from .tokens import (
    IMAGE_TOKENS_MAX,
    IMAGE_TOKENS_TYPICAL,
    expected_output_tokens,
    measure_input,
)

SYSTEM_ROLE_ADAPTATIONS = frozenset({"merge_into_user", "developer"})
_T = TypeVar("_T")


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


def _frozen(cls: type[_T], **fields: object) -> _T:
    """cls(**fields) for a frozen dataclass, built the way one is unpickled: the generated __init__ sets each
    field through its own object.__setattr__ call, and route() builds a Candidate for every eligible model
    and a Rejection for every model turned away by size, for every task (the Candidates alone were over a
    quarter of routing's time). Every field must be given: test_routing_fast checks that the objects equal
    the constructor's and have exactly the dataclass's fields."""
    obj = object.__new__(cls)
    object.__setattr__(obj, "__dict__", fields)
    return obj


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
    today = _utc_date(now)
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
        known = _catalog_names(catalog)
        for entry in task.models:
            if entry not in known:
                warnings.append(f"allow-list entry {entry!r} matches no model in the catalog")

    shape = _Shape(needs.images > 0, needs.system, needs.schema, needs.max_output, request.temperature is not None)
    verdicts = _static_verdicts(
        catalog, shape, pinned_keys, allow, frozenset(deny), frozenset(credentials), min_tier, today
    )
    size_key = (
        id(verdicts), needs.images, needs.text_est, needs.text_upper, needs.out_est, needs.max_output,
        needs.reasoning_budget, max_cost_per_task_picos,
    )  # fmt: skip
    sized = _SIZED.get(size_key)
    if sized is not None and sized.verdicts is verdicts and not sized.cooling(health, now):
        # A size seen before, no eligible model cooling down: every figure, object and order comes from its table.
        _TABLE_USE[0] += 1
        warnings += sized.pin_warnings
        return RouteDecision(sized.candidates(health.latency_ms), sized.rejected, tuple(warnings))
    pinned_from = len(warnings)
    # Rules 8-11 and the estimates, per model that passed the static rules: integer arithmetic on the _Fit.
    images, text_est, text_upper, out_visible = needs.images, needs.text_est, needs.text_upper, needs.out_est
    max_output, request_budget = needs.max_output, needs.reasoning_budget
    max_cost = max_cost_per_task_picos
    max_cost_usd = ""  # formatted on the first model it turns away
    any_cooling = bool(health.cooldown_until)
    latency = health.latency_ms
    inf = float("inf")
    eligible: list[_Row] = []
    cooling: list[tuple[_Row, float]] = []
    rejected: list[Rejection] = []
    for fit in verdicts:
        if isinstance(fit, Rejection):  # failed a static rule
            rejected.append(fit)
            continue
        (model, key, notes, pin_warnings, img_typ, img_max, reasoning, budget, expected_reasoning, model_max_output,
         window, rate_in, rate_out, dear_in, dear_out, tiers) = fit  # fmt: skip
        in_est = text_est + images * img_typ
        cap = max_output + (request_budget or budget) if reasoning else max_output
        if cap > model_max_output:
            cap = model_max_output
        if in_est + cap > window:
            reason = f"context {window:,} < {in_est + cap:,} needed"
            rejected.append(_frozen(Rejection, model=model, reason=reason, estimated_picos=None, rule="context"))
            continue
        out_est = out_visible + expected_reasoning
        if out_est > cap:
            out_est = cap
        for above, t_in, t_out, _, _ in tiers:  # the estimate: at the tier the expected input falls in
            if in_est > above:
                rate_in, rate_out = t_in, t_out
        picos = in_est * rate_in + out_est * rate_out
        if max_cost is not None and picos > max_cost:
            max_cost_usd = max_cost_usd or exact_usd(max_cost)
            reason = f"est {exact_usd(picos)} > max cost per task {max_cost_usd}"
            rejected.append(_frozen(Rejection, model=model, reason=reason, estimated_picos=picos, rule="max_cost"))
            continue
        in_upper = text_upper + images * img_max
        for above, _, _, t_dear_in, t_dear_out in tiers:  # the bound: the dearest tier the upper count reaches
            if in_upper > above:
                dear_in, dear_out = max(dear_in, t_dear_in), max(dear_out, t_dear_out)
        row = (
            picos, latency.get(key, inf), key, model, in_upper * dear_in + cap * dear_out, in_est, in_upper, out_est,
            cap, notes,
        )  # fmt: skip
        left = _cooling_left(health, model, now) if any_cooling else None
        if left is not None:
            cooling.append((row, left))
            continue
        eligible.append(row)
        warnings += pin_warnings

    if not eligible and cooling:
        soonest = min(left for _, left in cooling)
        warnings.append(f"every eligible model is cooling down; the first is free again in {soonest:.0f} s")
        eligible = [row for row, _ in cooling]
    elif cooling:
        rejected += [Rejection(row[3], f"cooling down {left:.0f} s", row[0], "cooldown") for row, left in cooling]
        rejected.sort(key=lambda r: r.model.key)  # otherwise already in key order, as the verdicts are

    if not cooling:  # a size seen twice gets a table (most sizes of a varied job come once)
        if _SEEN.pop(size_key, False):
            if _tables_pay():
                _remember(size_key, _SizedRoute(verdicts, eligible, rejected, warnings[pinned_from:]))
        else:
            if len(_SEEN) >= _SIZED_MAX_SEEN:
                _SEEN.clear()
            _SEEN[size_key] = True
    eligible.sort()  # by (picos, latency, key): keys are unique, so the rest of a row is never compared
    return RouteDecision(_candidates(eligible), tuple(rejected), tuple(warnings))


# An eligible model in route(): (estimated picos, observed latency, key), the sort key, then the model, upper
# bound picos, input tokens expected and at most, expected output, completion cap and adaptation notes.
_Row = tuple[int, float, str, ModelInfo, int, int, int, int, int, tuple[str, ...]]
_Verdicts = tuple["Rejection | _Fit", ...]
_Order = tuple[tuple[int, ...], ...]  # per run of equal estimates, the order of its rows


class _SizedRoute:
    """route()'s decision for one request size (token counts, images, output cap and budget, max cost) against
    one shape's verdicts, when no eligible model is cooling down, but for the order of equal estimates, which
    observed latency breaks. A job's tasks often come in a few sizes, and for a size seen before route() only
    reads this table: its Candidates and Rejections are shared by the decisions, as the static rejections
    always were (they are immutable), and it builds none."""

    __slots__ = ("verdicts", "rejected", "pin_warnings", "_models", "_ordered", "_ties", "_by_order")

    def __init__(self, verdicts: _Verdicts, rows: list[_Row], rejected: list[Rejection], pins: list[str]) -> None:
        self.verdicts = verdicts  # held: the tables are keyed by the verdicts' id
        self.rejected = tuple(rejected)
        self.pin_warnings = tuple(pins)
        self._models = tuple(row[3] for row in rows)
        ordered = sorted(rows, key=lambda r: (r[0], r[2]))  # by estimate, then key (latency comes in between)
        self._ordered = ordered
        ties, i = [], 0  # runs of equal estimates: there latency decides (unknown sorts last), then the key
        while i < len(ordered):
            j = i + 1
            while j < len(ordered) and ordered[j][0] == ordered[i][0]:
                j += 1
            if j - i > 1:
                ties.append((i, j))
            i = j
        self._ties = tuple(ties)
        self._by_order: dict[_Order, tuple[Candidate, ...]] = {}

    def cooling(self, health: Health, now: float) -> bool:
        """Whether an eligible model (or its provider) is cooling down: route() then decides from scratch."""
        return bool(health.cooldown_until) and any(_cooling_left(health, m, now) is not None for m in self._models)

    def candidates(self, latency: dict[str, float]) -> tuple[Candidate, ...]:
        ordered = self._ordered
        order: _Order = ()
        if self._ties:
            inf = float("inf")
            order = tuple(
                tuple(sorted(range(a, b), key=lambda k: (latency.get(ordered[k][2], inf), ordered[k][2])))
                for a, b in self._ties
            )
        got = self._by_order.get(order)
        if got is None:
            rows = list(ordered)
            for (a, b), idx in zip(self._ties, order):
                rows[a:b] = [ordered[k] for k in idx]
            if len(self._by_order) >= 64:  # latencies drift: keep it small
                self._by_order.clear()
            got = self._by_order[order] = _candidates(rows)
        return got


def _candidates(eligible: list[_Row]) -> tuple[Candidate, ...]:
    """The Candidates of `eligible`, in its order (the first is the cheapest)."""
    cheapest = eligible[0][0] if eligible else 0
    return tuple(
        [
            _frozen(
                Candidate,
                model=model,
                estimated_picos=picos,
                upper_bound_picos=upper,
                input_tokens_est=in_est,
                input_tokens_upper=in_upper,
                output_tokens_est=out_est,
                completion_cap=cap,
                first=i == 0,
                cheapest_picos=cheapest,
                notes=notes,
            )
            for i, (picos, _, _, model, upper, in_est, in_upper, out_est, cap, notes) in enumerate(eligible)
        ]
    )


# Tables by (id of the verdicts, request size, max cost), only for sizes seen twice (most sizes of a job with
# varied inputs come once), and a few hundred at most: they hold objects the garbage collector walks.
_SIZED: dict[tuple[int | None, ...], _SizedRoute] = {}
_SEEN: dict[tuple[int | None, ...], bool] = {}
_SIZED_MAX, _SIZED_MAX_SEEN = 256, 4096


# Whether tables pay for their building: [uses, builds, sizes seen twice] since the last decay. A job with
# thousands of sizes that each come a few times builds tables it hardly uses (and the cap clears them all):
# routing then ran at ~0.86x the speed of building none (bench_route's varied mix). So while builds outnumber
# uses, only one size in _SAMPLE gets a table: enough to see the uses come back when the sizes start repeating.
_TABLE_USE = [0, 0, 0]
_DECAY_AT, _SAMPLE = 4096, 16


def _tables_pay() -> bool:
    uses, builds, candidates = _TABLE_USE
    if candidates >= _DECAY_AT:  # the recent past counts, not the whole process's life
        _TABLE_USE[:] = [uses // 2, builds // 2, candidates // 2]
    _TABLE_USE[2] += 1
    if builds < 64 or uses >= builds or candidates % _SAMPLE == 0:
        _TABLE_USE[1] += 1
        return True
    return False


def _remember(key: tuple[int | None, ...], table: _SizedRoute) -> None:
    if len(_SIZED) >= _SIZED_MAX:
        _SIZED.clear()
    _SIZED[key] = table


def escalation_order(decision: RouteDecision, failed: ModelInfo) -> list[Candidate]:
    """The cascade after an invalid output: candidates of a strictly higher tier than `failed`, cheapest first."""
    return [c for c in decision.candidates if c.model.tier.rank > failed.tier.rank]
