"""The policy file, and the routing restriction it implies.

A policy (written by `llmbatch calibrate`, read by `run --policy`) maps each task group (sampling.group_key:
task kind + label set or schema) to the model that answers first, an optional confidence threshold, and the
reference model it escalates to. Inside the policy the usual rule holds: the allowed models are still
checked for eligibility and ordered by this request's estimated cost. Groups the policy does not name
route as usual. A pinned line (`model`) is never overridden.

    {"version": 1, "target": 0.95, "confidence": 0.95, "groups": {"classify:3f2a...": {
        "description": "classify positive, negative, neutral", "kind": "classify", "judged": false,
        "model": "groq/llama-3.1-8b-instant", "threshold": 0.61, "escalate_to": "openai/gpt-4.1",
        "n": 192, "agreement": 0.99, "lower_bound": 0.958, "escalation_rate": 0.18,
        "expected_cost_per_1k_usd": "0.0123", "reference_cost_per_1k_usd": "0.0801", "models": [...]}}}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError
from ..models import Completion, JobSpec, TaskLine
from ..routing import Candidate, RouteDecision, Rejection, escalation_order
from .sampling import group_key

VERSION = 1
_ENTRY_KEYS = ("model", "escalate_to")


def load(path: str | Path) -> dict[str, Any]:
    """Read and check a policy file; InputError with one clear line when it is not one."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except OSError as e:
        raise InputError(f"{path}: cannot read the policy: {e.strerror}") from None
    except orjson.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e}); write one with `llmbatch calibrate`") from None
    check(data, str(path))
    return data


def check(data: Any, where: str = "policy") -> None:
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("groups"), dict):
        raise InputError(
            f'{where}: not a version-{VERSION} policy (needs "version": {VERSION} and "groups"); '
            f"write one with `llmbatch calibrate`"
        )
    for key, entry in data["groups"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in _ENTRY_KEYS):
            raise InputError(f'{where}: group {key!r} needs "model" and "escalate_to" (provider/model)')
        t = entry.get("threshold")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1):
            raise InputError(f"{where}: group {key!r}: threshold must be a number in [0, 1] or null")


class PolicyRouter:
    """What the engine asks a job's policy (or a calibration job) on each task. Pure."""

    def __init__(self, policy: dict[str, Any] | None, *, calibration: bool = False, escalate: bool = True):
        self.groups: dict[str, dict[str, Any]] = (policy or {}).get("groups", {})
        self.calibration = calibration
        self.escalate = escalate

    def entry(self, task: TaskLine) -> dict[str, Any] | None:
        if task.model or not self.groups:  # a pin wins over the policy
            return None
        return self.groups.get(group_key(task))

    def wants_logprobs(self, task: TaskLine) -> bool:
        if self.calibration:
            return True
        e = self.entry(task)
        return e is not None and e.get("threshold") is not None

    def restrict(self, task: TaskLine, decision: RouteDecision) -> RouteDecision:
        """Keep the policy's models (cheapest eligible first, as always). If none of them is eligible, the
        decision stands as it was, with a warning: a policy never makes a task impossible."""
        e = self.entry(task)
        if e is None:
            return decision
        keep = {e["model"], e["escalate_to"]}
        cands = [c for c in decision.candidates if c.model.key in keep]
        if not cands:
            return dataclasses.replace(
                decision,
                warnings=decision.warnings
                + (f"quality policy: neither {e['model']} nor {e['escalate_to']} is eligible; routing as usual",),
            )
        dropped = tuple(
            Rejection(c.model, "not in the quality policy", None, "policy")
            for c in decision.candidates
            if c.model.key not in keep
        )
        cheapest = cands[0].estimated_picos
        cands = [dataclasses.replace(c, first=i == 0, cheapest_picos=cheapest) for i, c in enumerate(cands)]
        return RouteDecision(tuple(cands), decision.rejected + dropped, decision.warnings)

    def low_confidence(self, task: TaskLine, model_key: str, completion: Completion) -> str | None:
        """Why this valid answer is escalated anyway (below the policy's threshold), or None."""
        e = self.entry(task)
        if not self.escalate or e is None or e.get("threshold") is None or model_key != e["model"]:
            return None
        if completion.confidence is None or completion.confidence >= e["threshold"]:
            return None  # no logprobs came back: the answer stands (the policy's figures assume they do)
        return f"confidence {completion.confidence:.3f} below the quality policy's threshold {e['threshold']:.3f}"

    def escalation(self, task: TaskLine, decision: RouteDecision, failed) -> list[Candidate]:
        """Where an invalid or low-confidence answer goes: the policy's reference, else the usual cascade."""
        e = self.entry(task)
        if e is None:
            return escalation_order(decision, failed)
        return [c for c in decision.candidates if c.model.key == e["escalate_to"] and c.model.key != failed.key]

    def record(self, output: Any, completion: Completion) -> Any:
        """A calibration job keeps each answer's confidence next to it; other jobs store the answer as is."""
        return {"answer": output, "confidence": completion.confidence} if self.calibration else output


def router_for(spec: JobSpec) -> PolicyRouter | None:
    if not spec.policy and not spec.calibration:
        return None
    return PolicyRouter(spec.policy, calibration=spec.calibration, escalate=spec.escalate)
