"""What the report says about a job that routed by a quality policy: the policy per group, the measured
agreement and its bound, and the expected versus actual cost (the calibration's spend shown with it)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import orjson
from sqlalchemy import Connection, select

from ..money import fmt_usd
from ..store.schema import tasks
from .sampling import group_key_of


def quality_summary(conn: Connection, job: dict[str, Any]) -> dict[str, Any] | None:
    policy = orjson.loads(job["spec"] or "{}").get("policy")
    if not policy:
        return None
    groups = policy.get("groups", {})
    counts: Counter[str] = Counter()
    for (payload,) in conn.execute(select(tasks.c.payload).where(tasks.c.job_id == job["id"])):
        p = orjson.loads(payload)
        counts[group_key_of(p.get("task"), p.get("labels"), p.get("schema"))] += 1
    expected = sum(math.ceil(counts[k] * g["expected_cost_per_1k_picos"] / 1000) for k, g in groups.items())
    reference = sum(math.ceil(counts[k] * g["reference_cost_per_1k_picos"] / 1000) for k, g in groups.items())
    cal = policy.get("calibration") or {}
    cal_picos = int(cal.get("spent_picos") or 0)
    return {
        "target": policy.get("target"),
        "confidence": policy.get("confidence"),
        "groups": [
            {
                "group": k,
                "tasks": counts[k],
                **{
                    f: g.get(f)
                    for f in (
                        "description",
                        "judged",
                        "model",
                        "threshold",
                        "escalate_to",
                        "n",
                        "agreement",
                        "lower_bound",
                        "escalation_rate",
                    )
                },
            }
            for k, g in groups.items()
        ],
        "tasks_outside_policy": sum(v for k, v in counts.items() if k not in groups),
        "expected_picos": expected,
        "reference_picos": reference,
        "actual_picos": int(job["spent_picos"]),
        "calibration_jobs": cal.get("jobs", []),
        "calibration_picos": cal_picos,
        "total_picos": int(job["spent_picos"]) + cal_picos,
    }


def quality_lines(q: dict[str, Any] | None) -> list[str]:
    """The report's quality section as text lines (render.py prints them)."""
    if not q:
        return []
    out = [f"quality policy: target agreement {q['target']} with the reference, at confidence {q['confidence']}"]
    for g in q["groups"]:
        how = f"{g['model']}" + (
            f", escalating to {g['escalate_to']} below confidence {g['threshold']:.3f}"
            if g["threshold"] is not None
            else f", escalating invalid output to {g['escalate_to']}"
        )
        kind = "JUDGED (not exact)" if g["judged"] else "exact"
        out.append(
            f"  {g['description']} ({g['tasks']} tasks): {how}; measured agreement {g['agreement']:.3f} "
            f"on {g['n']} sampled lines, lower bound {g['lower_bound']:.3f} ({kind})"
        )
    if q["tasks_outside_policy"]:
        out.append(f"  {q['tasks_outside_policy']} task(s) in groups the policy does not name: routed as usual")
    out.append(
        f"  cost: expected {fmt_usd(q['expected_picos'])}, actual {fmt_usd(q['actual_picos'])}; "
        f"reference model alone: {fmt_usd(q['reference_picos'])} (expected)"
    )
    if q["calibration_jobs"]:
        out.append(
            f"  calibration: {fmt_usd(q['calibration_picos'])} in job(s) {', '.join(q['calibration_jobs'])}; "
            f"total with calibration {fmt_usd(q['total_picos'])}"
        )
    return out


def plan_lines(plan) -> list[str]:
    """What calibration will do and roughly cost, shown before it spends anything."""
    o = plan.options
    out = [
        f"calibration: target {o.target}, confidence {o.confidence}, up to {plan.sample_per_group} sampled "
        f"lines per task group, {plan.calls} calls, estimated {fmt_usd(plan.estimated_picos)}"
        + (f" (budget {o.budget_usd} USD, a hard cap)" if o.budget_usd is not None else " (no budget cap)")
    ]
    for g in plan.groups:
        out.append(
            f"  {g.stratum.description}: {len(g.stratum.sample)} of {g.stratum.population} lines; reference "
            f"{g.reference.model.key}; candidates {', '.join(c.model.key for c in g.candidates) or 'none'}"
        )
    out += [f"  skipped: {s}" for s in plan.skipped]
    return out


def calibration_lines(policy: dict[str, Any]) -> list[str]:
    """Per group: per model agreement, bound, cost per 1k tasks; then the policy and its expected cost."""
    out = []
    for g in policy["groups"].values():
        kind = "JUDGED by the reference model (not exact)" if g["judged"] else "exact"
        out.append(f"{g['description']} — agreement with {g['escalate_to']} on {g['n']} sampled lines ({kind}):")
        out.append(f"  {'model':44} {'agree':>6} {'bound':>6} {'cost/1k':>10}  with threshold")
        for m in g["models"]:
            thr = (
                "none passed"
                if not m["passed"]
                else f"t={m['threshold']:.3f}: agree {m['policy_agreement']:.3f}, bound {m['policy_lower_bound']:.3f}, "
                f"escalates {m['escalation_rate']:.0%}, expected {fmt_usd(m['expected_cost_per_1k_picos'])}/1k"
                if m["threshold"] is not None
                else f"no threshold needed: expected {fmt_usd(m['expected_cost_per_1k_picos'])}/1k"
            )
            if not m["logprobs"] and m["passed"]:
                thr += " (no logprobs)"
            out.append(
                f"  {m['model']:44} {m['agreement']:6.3f} {m['lower_bound']:6.3f} "
                f"{fmt_usd(m['cost_per_1k_picos']):>10}  {thr}"
            )
        out.append(f"  {g['escalate_to']:44} {'(ref)':>6} {'':>6} {fmt_usd(g['reference_cost_per_1k_picos']):>10}")
        how = (
            f" + escalation below confidence {g['threshold']:.3f}"
            if g["threshold"] is not None
            else " (the reference itself: no cheaper model met the bound)"
            if g["model"] == g["escalate_to"]
            else ""
        )
        out.append(
            f"  policy: {g['model']}{how}; agreement {g['agreement']:.3f}, lower bound {g['lower_bound']:.3f} "
            f">= {policy['target']} at confidence {policy['confidence']}; expected "
            f"{fmt_usd(g['expected_cost_per_1k_picos'])} per 1k tasks vs "
            f"{fmt_usd(g['reference_cost_per_1k_picos'])} always using the reference"
        )
    cal = policy.get("calibration") or {}
    out.append(
        f"calibration spent {fmt_usd(cal.get('spent_picos', 0))} (jobs {', '.join(cal.get('jobs', []))}; "
        f"`llmbatch report JOB` shows each call, purpose=calibration)"
    )
    return out
