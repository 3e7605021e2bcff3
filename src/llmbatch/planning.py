"""Plans without calls: route every line of a file (estimate, route --explain). Streams the file, and keeps
no per-line state: `route` gets each decision through a callback, so a million-line file plans in flat memory."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from .cache.estimate import CacheProbe, PrefixProbe
from .catalog.loading import load_catalog
from .config import Settings
from .ingest import LineError, parse_lines
from .models import JobSpec, TaskLine
from .names import check_spec_names
from .money import usd_json, usd_to_picos
from .prompts import build_request
from .providers import available_credentials
from .routing import RouteDecision, route


MAX_ERRORS_KEPT = 1000


@dataclass
class Plan:
    tasks: int = 0
    estimated_picos: int = 0
    upper_bound_picos: int = 0
    unroutable: int = 0
    budget_picos: int | None = None
    by_model: dict[str, dict[str, Any]] = field(
        default_factory=lambda: defaultdict(
            lambda: {"tasks": 0, "estimated_picos": 0, "upper_bound_picos": 0, "input_tokens": 0, "output_tokens": 0}
        )
    )
    errors: list[LineError] = field(default_factory=list)  # the first MAX_ERRORS_KEPT
    invalid_lines: int = 0
    # No provider key is set (and not --simulate): every model was priced as if its provider were configured.
    keys_assumed: bool = False
    cache_hits: int = 0  # tasks the response cache would answer ($0; not in the totals)
    cache_saved_picos: int = 0
    prefix: PrefixProbe = field(default_factory=PrefixProbe)  # expected prompt-cache reads
    prompt_cache_saved_picos: int = 0  # already taken off estimated_picos
    by_channel: list[dict[str, Any]] = field(default_factory=list)  # expected cost per channel (channel_report)

    @property
    def over_budget(self) -> bool:
        return self.budget_picos is not None and self.upper_bound_picos > self.budget_picos

    def estimate_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "estimated_usd": usd_json(self.estimated_picos),
            "upper_bound_usd": usd_json(self.upper_bound_picos),
            "budget_usd": usd_json(self.budget_picos),
            "over_budget": self.over_budget,
            "unroutable": self.unroutable,
            "invalid_lines": self.invalid_lines,
            "keys_assumed": self.keys_assumed,
            "by_model": [
                {
                    "model": k,
                    "tasks": v["tasks"],
                    "estimated_usd": usd_json(v["estimated_picos"]),
                    "upper_bound_usd": usd_json(v["upper_bound_picos"]),
                    "input_tokens": v["input_tokens"],
                    "output_tokens": v["output_tokens"],
                }
                for k, v in sorted(self.by_model.items(), key=lambda kv: -kv[1]["estimated_picos"])
            ],
            "cache": {"hits": self.cache_hits, "saved_usd": usd_json(self.cache_saved_picos)},
            "prompt_cache": {
                "cached_tokens": self.prefix.cached_tokens,
                "saved_usd": usd_json(self.prompt_cache_saved_picos),
            },
            "by_channel": self.by_channel,
        }


def route_item(task: TaskLine, d: RouteDecision, *, explain: bool) -> dict[str, Any]:
    """One line of `llmbatch route`: the model this task gets, why, and (explain) the cheaper ones it does not."""
    chosen = d.chosen
    item: dict[str, Any] = {
        "id": task.id,
        "model": chosen.model.key if chosen else None,
        "estimated_usd": usd_json(chosen.estimated_picos) if chosen else None,
        "upper_bound_usd": usd_json(chosen.upper_bound_picos) if chosen else None,
        "reason": chosen.reason if chosen else "no eligible model",
        "fallbacks": [c.model.key for c in d.candidates[1:4]],
        "warnings": list(d.warnings),
    }
    if explain:
        limit = chosen.estimated_picos if chosen else None
        item["not_chosen"] = [
            {
                "model": r.model.key,
                "reason": r.reason,
                "estimated_usd": usd_json(r.estimated_picos) if r.estimated_picos is not None else None,
            }
            for r in d.rejected
            if limit is None or r.estimated_picos is None or r.estimated_picos <= limit
        ]
    return item


def plan_file(
    settings: Settings, path, spec: JobSpec, *, on_decision: Callable[[TaskLine, RouteDecision], None] | None = None
) -> Plan:
    catalog = load_catalog(settings)
    check_spec_names(spec, catalog)
    credentials = available_credentials(catalog, simulate=spec.simulate)
    keys_assumed = not credentials
    if keys_assumed:  # a plan with no callable model would say $0: price what a configured machine would run
        credentials = available_credentials(catalog, simulate=True)
    max_cost = usd_to_picos(spec.max_cost_per_task_usd) if spec.max_cost_per_task_usd else None
    plan = Plan(
        budget_picos=usd_to_picos(spec.budget_usd) if spec.budget_usd else None,
        keys_assumed=keys_assumed,
        prefix=PrefixProbe(scheduling=settings.prompt_cache_scheduling),
    )
    deny = frozenset(spec.deny or ())
    probe = CacheProbe(settings, catalog, spec) if spec.cache else None
    from .channel_report import ChannelEstimate

    by_channel = ChannelEstimate()
    for _line_no, item in parse_lines(path, spec, limits=settings.input_limits):
        if isinstance(item, LineError):
            plan.invalid_lines += 1
            if len(plan.errors) < MAX_ERRORS_KEPT:  # the count is exact; the list stays small
                plan.errors.append(item)
            continue
        request = build_request(item)
        d = route(
            item,
            request,
            catalog,
            credentials=credentials,
            deny=deny,
            job_min_tier=spec.min_tier,
            max_cost_per_task_picos=max_cost,
        )
        plan.tasks += 1
        if on_decision is not None:
            on_decision(item, d)
        if not d.candidates:
            plan.unroutable += 1
            continue
        c = d.candidates[0]
        if probe is not None and probe.answers(request, c):
            plan.cache_hits += 1
            plan.cache_saved_picos += c.estimated_picos
            continue
        by_channel.add(d.candidates)
        prompt_saved = plan.prefix.saving_picos(request, c)
        plan.prompt_cache_saved_picos += prompt_saved
        plan.estimated_picos += c.estimated_picos - prompt_saved
        plan.upper_bound_picos += c.upper_bound_picos
        m = plan.by_model[c.model.key]
        m["tasks"] += 1
        m["estimated_picos"] += c.estimated_picos - prompt_saved
        m["upper_bound_picos"] += c.upper_bound_picos
        m["input_tokens"] += c.input_tokens_est
        m["output_tokens"] += c.output_tokens_est
    plan.by_channel = by_channel.rows()
    return plan
