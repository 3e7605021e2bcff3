"""`llmbatch calibrate` and `run --quality`: sample, run the sample on the reference and the cheaper
candidates through the normal engine and ledger (a calibration job: every attempt has purpose
`calibration`, its budget is a hard cap like any job's), measure agreement, choose the policy.

Steps: plan() reads the file once (stratified reservoir sample per task group), routes one sampled line per
group to find the reference (default: the cheapest model of the highest tier that can take the group) and the
candidates (the cheapest of each lower-cost tier, then the next cheapest, up to `candidates`), sizes the
sample and estimates the spend. execute() runs the calibration job (and, for summarize/chat groups, a second
calibration job in which the judge grades each candidate answer against the reference's), then
selection.choose() picks the policy per group.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..config import Settings
from ..errors import InputError
from ..models import JobSpec, TaskLine
from ..money import picos_to_usd, usd_json, usd_to_picos
from ..routing import Candidate, route
from . import agreement, selection
from .policy import VERSION
from .sampling import Stratum, stratified_sample
from .stats import sample_size

DEFAULT_CANDIDATES = 4


@dataclass(frozen=True)
class Options:
    target: float = 0.95
    confidence: float = 0.95
    sample: int | None = None  # lines per group; None = sized so the bound can be met
    reference: str | None = None  # provider/model or a bare model id
    budget_usd: str | None = None  # hard cap of the calibration spend
    candidates: int = DEFAULT_CANDIDATES
    seed: int = 0

    def __post_init__(self):
        for name in ("target", "confidence"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise InputError(f"--{name} must be between 0 and 1 (e.g. 0.95), got {v}")
        if self.sample is not None and self.sample < 1:
            raise InputError("--sample must be at least 1")
        if self.candidates < 1:
            raise InputError("the number of candidate models must be at least 1")


@dataclass
class GroupPlan:
    stratum: Stratum
    reference: Candidate
    candidates: list[Candidate]

    @property
    def models(self) -> list[Candidate]:
        return [self.reference, *self.candidates]


@dataclass
class Plan:
    options: Options
    sample_per_group: int
    groups: list[GroupPlan]
    skipped: list[str] = field(default_factory=list)  # groups nothing can serve, with why

    @property
    def calls(self) -> int:
        return sum(len(g.stratum.sample) * len(g.models) for g in self.groups)

    @property
    def estimated_picos(self) -> int:
        return sum(len(g.stratum.sample) * sum(c.estimated_picos for c in g.models) for g in self.groups)


def default_sample_size(opts: Options) -> int:
    """Lines per group so that a policy agreeing on `target + 70% of the gap to 1` of them passes the bound
    (Bonferroni over the candidates)."""
    expected = opts.target + 0.7 * (1 - opts.target)
    n = sample_size(opts.target, expected, 1 - (1 - opts.confidence) / opts.candidates)
    return n or 1000


def _tasks(input_path: str | Path, spec: JobSpec):
    from ..ingest import LineError, parse_lines

    for _, item in parse_lines(input_path, spec):
        if not isinstance(item, LineError):
            yield item


def _credentials(catalog, simulate: bool) -> frozenset[str]:
    from ..providers import available_credentials

    return frozenset(available_credentials(catalog, simulate=simulate))


def plan(settings: Settings, input_path: str | Path, spec: JobSpec, opts: Options) -> Plan:
    from ..catalog.loading import load_catalog
    from ..prompts import build_request

    catalog = load_catalog(settings)
    credentials = _credentials(catalog, spec.simulate)
    n = opts.sample or default_sample_size(opts)
    strata = stratified_sample(_tasks(input_path, spec), n, seed=opts.seed)
    if not strata:
        raise InputError(f"{input_path}: no valid task lines to calibrate on")
    out = Plan(opts, n, [])
    for s in strata.values():
        task = s.sample[0]
        decision = route(
            task,
            build_request(task),
            catalog,
            credentials=credentials,
            deny=frozenset(spec.deny or ()),
            job_min_tier=spec.min_tier,
        )
        if not decision.candidates:
            out.skipped.append(f"{s.description}: {decision.rejection_summary()}")
            continue
        ref = _reference(decision.candidates, opts.reference, s)
        out.groups.append(GroupPlan(s, ref, _candidates(decision.candidates, ref, opts.candidates)))
    if not out.groups:
        raise InputError("no task group has an eligible model: " + "; ".join(out.skipped))
    return out


def _reference(cands, wanted: str | None, s: Stratum) -> Candidate:
    if wanted:
        for c in cands:
            if wanted in (c.model.key, c.model.model):
                return c
        raise InputError(
            f"--reference {wanted}: not an eligible model for {s.description} "
            f"(`llmbatch route FILE --explain` says why)"
        )
    top = max(c.model.tier.rank for c in cands)
    return next(c for c in cands if c.model.tier.rank == top)  # candidates are cheapest first


def _candidates(cands, ref: Candidate, limit: int) -> list[Candidate]:
    cheaper = [c for c in cands if c.estimated_picos < ref.estimated_picos and c.model.key != ref.model.key]
    chosen: list[Candidate] = []
    for tier in sorted({c.model.tier.rank for c in cheaper}):  # the cheapest of each tier first
        chosen.append(next(c for c in cheaper if c.model.tier.rank == tier))
    chosen = chosen[:limit]
    for c in cheaper:
        if len(chosen) >= limit:
            break
        if c not in chosen:
            chosen.append(c)
    return sorted(chosen, key=lambda c: c.estimated_picos)


# -------------------------------------------------------------------------------------------- running


@dataclass
class Answer:
    status: str
    ok: bool
    output: Any
    confidence: float | None
    cost_picos: int


@dataclass
class Result:
    policy: dict[str, Any]
    plan: Plan
    job_ids: list[str]
    spent_picos: int
    budget_picos: int | None


def _line(task: TaskLine, model_key: str, meta: list) -> bytes:
    d = task.model_dump(mode="json", by_alias=True, exclude_none=True)
    d.update(id=f"{meta[0]}#{meta[1]}@{meta[2]}", model=model_key, metadata={"q": meta})
    d.pop("models", None)
    d.pop("min_tier", None)
    return orjson.dumps(d)


def _run_job(settings: Settings, lines: list[bytes], spec: JobSpec, concurrency: int) -> tuple[str, dict, int]:
    """Run the lines as one calibration job; (job id, answers by metadata key, spent picos)."""
    from ..jobs import create_job, run_embedded
    from ..store import repo
    from ..store.db import get_engine, reading

    fd, tmp = tempfile.mkstemp(prefix="llmbatch-calibration-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        job_id, _ = create_job(settings, tmp, spec, executor="local")
    finally:
        os.unlink(tmp)
    run_embedded(settings, job_id, concurrency=concurrency)
    answers: dict[tuple, Answer] = {}
    with reading(get_engine(settings.database_url)) as conn:
        for row in repo.iter_task_rows(conn, job_id):
            meta = tuple(orjson.loads(row["payload"])["metadata"]["q"])
            out: Any = orjson.loads(row["output"]) if row["output"] is not None else None
            ok = row["status"] == "succeeded" and isinstance(out, dict)
            answers[meta] = Answer(
                row["status"],
                ok,
                out.get("answer") if ok else None,
                out.get("confidence") if ok else None,
                int(row["cost_picos"] or 0),
            )
        job = repo.get_job(conn, job_id)
        assert job is not None  # created above
        spent = int(job["spent_picos"])
    return job_id, answers, spent


def execute(settings: Settings, p: Plan, spec: JobSpec, *, input_path: str, concurrency: int) -> Result:
    opts = p.options
    budget = usd_to_picos(opts.budget_usd) if opts.budget_usd is not None else None
    name = f"calibration: {Path(input_path).name}"
    base = JobSpec(name=name, simulate=spec.simulate, escalate=False, calibration=True, budget_usd=opts.budget_usd)
    lines = [
        _line(task, c.model.key, [g.stratum.key, i, c.model.key])
        for g in p.groups
        for i, task in enumerate(g.stratum.sample)
        for c in g.models
    ]
    job_id, answers, spent = _run_job(settings, lines, base, concurrency)
    job_ids = [job_id]

    verdicts: dict[tuple, bool] = {}
    judge_lines = []
    for g in p.groups:
        if agreement.exact(g.stratum.kind):
            continue
        ref = g.reference.model.key
        for i, task in enumerate(g.stratum.sample):
            r = answers.get((g.stratum.key, i, ref))
            for c in g.candidates:
                a = answers.get((g.stratum.key, i, c.model.key))
                if r and r.ok and a and a.ok:
                    judge = TaskLine(
                        id="j",
                        task="chat",
                        max_output_tokens=8,
                        messages=agreement.judge_messages(_text(task), _str(r.output), _str(a.output)),
                    )
                    judge_lines.append(_line(judge, ref, [g.stratum.key, i, c.model.key]))
    if judge_lines:
        left = None if budget is None else max(0, budget - spent)
        judge_spec = base.model_copy(
            update={
                "name": f"judging: {Path(input_path).name}",
                "budget_usd": None if left is None else str(picos_to_usd(left)),
            }
        )
        jid, judged, jspent = _run_job(settings, judge_lines, judge_spec, concurrency)
        job_ids.append(jid)
        spent += jspent
        verdicts = {k: agreement.judge_passed(v.output) for k, v in judged.items() if v.ok}

    groups = {}
    for g in p.groups:
        groups[g.stratum.key] = _group_policy(g, answers, verdicts, opts)
    policy = {
        "version": VERSION,
        "target": opts.target,
        "confidence": opts.confidence,
        "input": str(input_path),
        "groups": groups,
        "calibration": {
            "jobs": job_ids,
            "spent_picos": spent,
            "spent_usd": usd_json(spent),
            "budget_picos": budget,
            "sample_per_group": p.sample_per_group,
        },
    }
    return Result(policy, p, job_ids, spent, budget)


def _text(task: TaskLine) -> str:
    if task.input is not None:
        return task.input
    return "\n".join(m.content if isinstance(m.content, str) else "" for m in task.messages or [])


def _str(v: Any) -> str:
    return v if isinstance(v, str) else orjson.dumps(v).decode()


def _group_policy(g: GroupPlan, answers: dict, verdicts: dict, opts: Options) -> dict[str, Any]:
    key, ref = g.stratum.key, g.reference.model.key
    judged = not agreement.exact(g.stratum.kind)
    by_model: dict[str, list[selection.Item]] = {}
    ref_costs = []
    for i, _ in enumerate(g.stratum.sample):
        r = answers.get((key, i, ref))
        if not r or not r.ok:
            continue  # no reference answer (failed, or skipped on the budget): nothing to agree with
        ref_costs.append(r.cost_picos)
        for c in g.candidates:
            a = answers.get((key, i, c.model.key))
            if a is None or a.status not in ("succeeded", "failed"):
                continue  # skipped on the calibration budget (or cancelled): not an observation
            if judged:
                if a.ok and (key, i, c.model.key) not in verdicts:
                    continue  # the judge gave no verdict (budget): not an observation
                agrees = a.ok and verdicts[(key, i, c.model.key)]
            else:
                agrees = a.ok and agreement.agrees(g.stratum.kind, a.output, r.output)
            by_model.setdefault(c.model.key, []).append(
                selection.Item(
                    agrees=agrees,
                    valid=a.ok,
                    confidence=a.confidence,
                    cost_picos=a.cost_picos,
                    ref_cost_picos=r.cost_picos,
                )
            )
    if not ref_costs:
        raise InputError(
            f"calibration: the reference {ref} answered none of the sampled {g.stratum.description} "
            f"lines (budget too small? see `llmbatch report` of the calibration job)"
        )
    ref_cost = sum(ref_costs) / len(ref_costs)
    choice = selection.choose(ref, by_model, ref_cost, target=opts.target, confidence=opts.confidence)
    per_1k = lambda picos: math.ceil(picos * 1000)  # noqa: E731 - expected cost of 1,000 tasks, in picos
    return {
        "description": g.stratum.description,
        "kind": g.stratum.kind,
        "judged": judged,
        "model": choice.model,
        "threshold": choice.threshold,
        "escalate_to": ref,
        "population": g.stratum.population,
        "n": len(ref_costs),
        "agreement": choice.agreement,
        "lower_bound": choice.lower_bound,
        "escalation_rate": choice.escalation_rate,
        "expected_cost_per_1k_picos": per_1k(choice.expected_cost_per_task_picos),
        "reference_cost_per_1k_picos": per_1k(ref_cost),
        "models": [
            {
                "model": f.model,
                "n": f.n,
                "agreement": f.agreement,
                "lower_bound": f.lower_bound,
                "cost_per_1k_picos": per_1k(f.cost_per_task_picos),
                "logprobs": f.has_confidence,
                "threshold": f.threshold,
                "policy_agreement": f.policy_agreement,
                "policy_lower_bound": f.policy_lower_bound,
                "escalation_rate": f.escalation_rate,
                "expected_cost_per_1k_picos": (
                    per_1k(f.expected_cost_per_task_picos) if f.expected_cost_per_task_picos is not None else None
                ),
                "passed": f.passed,
            }
            for f in choice.figures
        ],
    }


def spec_with_policy(spec: JobSpec, result: Result) -> JobSpec:
    """The job's spec after `run --quality` calibrated: the policy, and what the calibration spent taken off
    the job's budget (so calibration + run stay within it)."""
    update: dict[str, Any] = {"policy": result.policy}
    if spec.budget_usd is not None:
        left = max(0, usd_to_picos(spec.budget_usd) - result.spent_picos)
        update["budget_usd"] = str(picos_to_usd(left))
    return spec.model_copy(update=update)
