"""Pydantic shapes that cross a seam: input lines, job specs, provider requests/responses, results.

Messages use OpenAI's chat shape as the neutral form (role + content, where content is a string or a
list of parts such as {"type": "text"} and {"type": "image_url"}); adapters translate from it.
"""

from __future__ import annotations

from enum import Enum
from functools import lru_cache
from typing import Any, Literal

import orjson

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskType = Literal["summarize", "classify", "extract", "chat"]
TASK_TYPES: tuple[str, ...] = ("summarize", "classify", "extract", "chat")


class Tier(str, Enum):
    mini = "mini"
    standard = "standard"
    frontier = "frontier"

    @property
    def rank(self) -> int:
        return _TIER_RANK[self]


_TIER_RANK = {Tier.mini: 0, Tier.standard: 1, Tier.frontier: 2}

# Documented defaults: which quality tier each task type needs unless the job or the line says otherwise.
DEFAULT_MIN_TIER: dict[str, Tier] = {
    "classify": Tier.mini,
    "summarize": Tier.mini,
    "extract": Tier.mini,
    "chat": Tier.mini,
}

# Output budget when neither the line nor the job sets max_output_tokens.
DEFAULT_MAX_OUTPUT_TOKENS: dict[str, int] = {
    "classify": 16,
    "summarize": 300,
    "extract": 1024,
    "chat": 1024,
}


@lru_cache(maxsize=256)
def _schema_problem(schema_json: bytes) -> str | None:
    """Check a JSON Schema once per distinct schema: a million extract lines usually share one, and the
    meta-schema check costs ~0.5 ms."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(orjson.loads(schema_json))
    except SchemaError as e:
        return e.message
    return None


def _labels_problem(labels: list[str]) -> str | None:
    """Labels are matched trimmed and case-insensitively, so two that differ only there could never both be
    chosen, and an empty one can never be answered: each would fail only after paid escalations."""
    seen: dict[str, str] = {}
    for i, label in enumerate(labels):
        key = label.strip().casefold()
        if not key:
            return f"'labels' has an empty label at position {i}"
        if key in seen:
            return f"'labels' has duplicates after trimming and ignoring case: {seen[key]!r} and {label!r}"
        seen[key] = label
    return None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]

    @field_validator("content")
    @classmethod
    def _parts_are_known(cls, v):
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    continue
                if (
                    kind == "image_url"
                    and isinstance(part.get("image_url"), dict)
                    and isinstance(part["image_url"].get("url"), str)
                ):
                    continue
                raise ValueError(
                    f"content part {i} must be {{'type': 'text', 'text': ...}} or "
                    f"{{'type': 'image_url', 'image_url': {{'url': ...}}}}"
                )
        return v


class TaskLine(BaseModel):
    """One native input line, after validation. OpenAI Batch lines are converted into this shape."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(min_length=1, max_length=512)
    task: TaskType
    input: str | None = None
    images: list[str] | None = None  # image URLs or data: URIs that go with `input`
    messages: list[Message] | None = None
    labels: list[str] | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    max_output_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    models: list[str] | None = None  # allow-list
    model: str | None = None  # pinned: no routing
    min_tier: Tier | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_is_string(cls, v):
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("id must be a string (or an integer)")
        return str(v)

    @model_validator(mode="after")
    def _fields_fit_task(self):
        if self.input is None and not self.messages:
            raise ValueError(f"task '{self.task}' needs 'input' (a string) or 'messages'")
        if self.input is not None and not self.input.strip():
            raise ValueError("'input' is empty")
        if self.task == "classify":
            if not self.labels:
                raise ValueError("classify needs 'labels': a non-empty list of strings (or pass --labels)")
            problem = _labels_problem(self.labels)
            if problem:
                raise ValueError(problem)
        if self.task == "extract":
            if not self.json_schema:
                raise ValueError("extract needs 'schema': a JSON Schema object")
            problem = _schema_problem(orjson.dumps(self.json_schema, option=orjson.OPT_SORT_KEYS))
            if problem:
                raise ValueError(f"'schema' is not a valid JSON Schema: {problem}")
        return self


class JobSpec(BaseModel):
    """Job-wide defaults and limits (from --spec JOB.yaml and flags). A line's own fields win."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    task: TaskType | None = None
    labels: list[str] | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    max_output_tokens: int | None = Field(default=None, ge=1)
    min_tier: Tier | None = None
    models: list[str] | None = None  # allow-list
    deny: list[str] | None = None  # deny-list
    model: str | None = None  # pin every line
    budget_usd: str | None = None  # Decimal as string: exact
    max_cost_per_task_usd: str | None = None
    escalate: bool = True
    simulate: bool = False
    concurrency: int | None = Field(default=None, ge=1)
    strict: bool = False
    cache: bool = True  # answer tasks from earlier identical calls (--no-cache: False)
    # --- discount-channels ---
    channel: Literal["auto", "online", "flex", "batch"] = "auto"  # see channels.py
    deadline: str | None = None  # "90s", "30m", "24h": when the job must be done; None = as soon as possible

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_is_duration(cls, v):
        if v is None:
            return None
        from .channels import parse_duration

        parse_duration(v)
        return str(v)

    # --- quality-floor --- a routing policy (llmbatch.quality.policy); a calibration job's attempts have
    # purpose "calibration" and its tasks keep each answer's confidence.
    policy: dict[str, Any] | None = None
    calibration: bool = False

    @field_validator("budget_usd", "max_cost_per_task_usd", mode="before")
    @classmethod
    def _money_as_string(cls, v):
        if v is None:
            return None
        from decimal import Decimal, InvalidOperation

        try:
            d = Decimal(str(v))
        except InvalidOperation:
            raise ValueError(f"not a dollar amount: {v!r}") from None
        if not d.is_finite():
            raise ValueError(f"not a dollar amount: {v!r} (give a finite number, e.g. 40 or 0.25)")
        if d < 0:
            raise ValueError("must be >= 0")
        return str(d)


class ChatRequest(BaseModel):
    """Provider-neutral request the engine hands an adapter."""

    messages: list[dict[str, Any]]
    max_output_tokens: int
    temperature: float | None = None
    json_schema: dict[str, Any] | None = None  # ask for JSON matching this schema
    # Extra completion tokens allowed for hidden reasoning (reasoning models only); part of the cap.
    reasoning_budget_tokens: int = 0
    # Leading messages that form a shared prefix worth a prompt-cache breakpoint (Anthropic cache_control);
    # 0 = none. Set by the engine's prompt-cache planning (cache/prompt.py); never part of the cache key.
    cache_prefix_messages: int = 0
    logprobs: bool = False  # ask for token log-probabilities (adapters that can; quality-floor thresholds)


class Usage(BaseModel):
    """One convention for every provider: input_tokens counts all input (cached and cache-write included);
    output_tokens counts all output (reasoning included)."""

    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


class Completion(BaseModel):
    text: str
    usage: Usage
    finish_reason: str | None = None
    provider_request_id: str | None = None
    served_model: str | None = None
    confidence: float | None = None  # exp(sum of the answer's token logprobs), when the provider returned them


class TaskResult(BaseModel):
    """One line of `llmbatch results --format jsonl`."""

    id: str
    status: str
    provider: str | None = None
    model: str | None = None
    output: Any = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    attempts: int = 0
    metadata: dict[str, Any] | None = None
