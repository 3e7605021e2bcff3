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

import time

from ..catalog import Catalog, ModelInfo
from ..models import DEFAULT_MIN_TIER, ChatRequest, TaskLine, Tier
from ..money import exact_usd
from .rules import _catalog_names, _cooling_left, _needs, _resolve_pin, _Shape, _static_verdicts, _utc_date
from . import tables
from .tables import _candidates, _Row, _SizedRoute
from .types import Candidate, Health, Rejection, RouteDecision, _frozen

__all__ = ["Candidate", "Health", "Rejection", "RouteDecision", "escalation_order", "route"]


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
    sized = tables.table_for(size_key)
    if sized is not None and sized.verdicts is verdicts and not sized.cooling(health, now):
        # A size seen before, no eligible model cooling down: every figure, object and order comes from its table.
        tables.used()
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
        tables.seen(size_key, lambda: _SizedRoute(verdicts, eligible, rejected, warnings[pinned_from:]))
    eligible.sort()  # by (picos, latency, key): keys are unique, so the rest of a row is never compared
    return RouteDecision(_candidates(eligible), tuple(rejected), tuple(warnings))


def escalation_order(decision: RouteDecision, failed: ModelInfo) -> list[Candidate]:
    """The cascade after an invalid output: candidates of a strictly higher tier than `failed`, cheapest first."""
    return [c for c in decision.candidates if c.model.tier.rank > failed.tier.rank]
