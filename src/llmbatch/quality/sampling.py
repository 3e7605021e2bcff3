"""Stratified random sampling of task lines: one stratum per task group (task kind + label set, or + schema),
a reservoir of up to n lines in each, so a million-line file is read once in constant memory per group and
every group gets its own sample (its own guarantee). Seeded: the same file and seed give the same sample."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Iterable

import orjson

from ..models import TaskLine


def group_key(task: TaskLine) -> str:
    """`classify:<labels hash>`, `extract:<schema hash>`, or the bare kind for summarize/chat."""
    return group_key_of(task.task, task.labels, task.json_schema)


def group_key_of(kind: str, labels: list[str] | None, schema: dict | None) -> str:
    if kind == "classify":
        return "classify:" + _digest(sorted(labels or []))
    if kind == "extract":
        return "extract:" + _digest(schema)
    return kind


def group_description(task: TaskLine) -> str:
    if task.task == "classify":
        return "classify " + ", ".join(task.labels or [])
    if task.task == "extract":
        props = (task.json_schema or {}).get("properties") or {}
        return "extract " + ", ".join(sorted(props)) if props else "extract"
    return task.task


def _digest(obj) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


@dataclass
class Stratum:
    key: str
    description: str
    kind: str
    population: int = 0
    sample: list[TaskLine] = field(default_factory=list)


def stratified_sample(tasks: Iterable[TaskLine], n: int, *, seed: int = 0) -> dict[str, Stratum]:
    """Up to n lines per group, uniformly at random (reservoir sampling, algorithm R)."""
    if n < 1:
        raise ValueError("the sample size must be at least 1")
    rng = random.Random(seed)
    strata: dict[str, Stratum] = {}
    for task in tasks:
        key = group_key(task)
        s = strata.get(key)
        if s is None:
            s = strata[key] = Stratum(key, group_description(task), task.task)
        s.population += 1
        if len(s.sample) < n:
            s.sample.append(task)
        else:
            j = rng.randrange(s.population)
            if j < n:
                s.sample[j] = task
    return strata
