"""What makes two runs "the same command": the input file's bytes and the job's effective spec. Running the same
command again finds the job made from both and resumes it (or reports it) instead of paying again."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from ..models import JobSpec

# Spec fields that change how a job runs, not what it computes or spends: a different value is the same job.
_NOT_IDENTITY = ("name", "concurrency")


def input_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def spec_digest(spec: JobSpec) -> str:
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for k in _NOT_IDENTITY:
        data.pop(k, None)
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
