"""What every provider dialect supplies to the shared request pipeline (simulator.pipeline)."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..answers import ErrorRates, answer, scored_answer
from ..quality import TIER_WRONG_SHARE, model_factor
from ..apierror import ApiError
from ..conversation import Conversation
from ..modelinfo import SimModel
from ..ratelimit import RateDecision
from ..state import SimState
from ..tokens import stable_hash, text_tokens, truncate_to_tokens

# Mini models err at mini_error_rate, standard at a fifth of it, frontier never.
TIER_ERROR_SHARE = {"mini": 1.0, "standard": 0.2, "frontier": 0.0}
REASONING_MIN, REASONING_MAX = 200, 2000


@dataclass
class Parsed:
    conv: Conversation
    max_tokens: int | None  # the output cap the request asked for (None: model default)
    schema: Any = None  # structured-output schema from a request parameter
    json_mode: bool = False
    logprobs: bool = False  # the request asked for token log-probabilities


@dataclass
class Reply:
    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt-cache reads (counted in /_sim/stats)
    cache_write_tokens: int = 0  # prompt-cache writes (Anthropic cache_control)


class Dialect(ABC):
    api: str

    # --- request side -------------------------------------------------------------------------
    @abstractmethod
    def api_key(self, request: web.Request) -> str | None: ...

    def check_headers(self, request: web.Request) -> None:  # noqa: B027 - a hook: by default no header is required
        """Raise ApiError for a missing required header (after auth)."""

    @abstractmethod
    def model_name(self, request: web.Request, payload: dict) -> str | None: ...

    @abstractmethod
    def parse(self, payload: dict, model: SimModel) -> Parsed: ...

    @abstractmethod
    def respond(self, parsed: Parsed, model: SimModel, state: SimState, request_id: str) -> Reply: ...

    # --- errors -------------------------------------------------------------------------------
    @abstractmethod
    def missing_key(self) -> ApiError: ...

    @abstractmethod
    def bad_json(self) -> ApiError: ...

    @abstractmethod
    def model_not_found(self, name: str | None) -> ApiError: ...

    @abstractmethod
    def rate_limited(self, model: SimModel, rpm: int | None, retry_after: float) -> ApiError: ...

    @abstractmethod
    def server_error(self, rng: random.Random) -> ApiError: ...

    @abstractmethod
    def error_body(self, err: ApiError, request_id: str) -> dict[str, Any]: ...

    # --- headers ------------------------------------------------------------------------------
    def base_headers(self, request_id: str) -> dict[str, str]:
        return {"x-request-id": f"req_{request_id}"}

    def rate_headers(self, decision: RateDecision) -> dict[str, str]:
        return decision.headers()


def error_rates(state: SimState, model: SimModel) -> ErrorRates:
    cfg = state.config
    base = cfg.mini_error_rate * TIER_ERROR_SHARE.get(model.tier, 0.0)
    wrong = cfg.wrong_answer_rate * TIER_WRONG_SHARE.get(model.tier, 0.0) * model_factor(model.id)
    return ErrorRates(
        label=cfg.override(model.id, "label_error_rate", base),
        json=cfg.override(model.id, "json_error_rate", base),
        wrong=cfg.override(model.id, "wrong_answer_rate", wrong),
    )


def answer_text(parsed: Parsed, model: SimModel, state: SimState) -> str:
    return answer(
        parsed.conv, model=model.id, rates=error_rates(state, model), schema=parsed.schema, json_mode=parsed.json_mode
    )


def scored_answer_text(parsed: Parsed, model: SimModel, state: SimState) -> tuple[str, float]:
    """(the answer, the probability the model puts on it) for dialects that can return logprobs."""
    return scored_answer(
        parsed.conv, model=model.id, rates=error_rates(state, model), schema=parsed.schema, json_mode=parsed.json_mode
    )


def hidden_reasoning_tokens(model: SimModel, conv: Conversation) -> int:
    """Deterministic per (model, prompt), in [REASONING_MIN, REASONING_MAX]."""
    span = REASONING_MAX - REASONING_MIN + 1
    return REASONING_MIN + stable_hash("reasoning", model.id, conv.all_text()) % span


def fit_to_cap(text: str, cap: int, reasoning: int | None) -> tuple[str, int, bool]:
    """(the visible text, hidden reasoning tokens, whether the cap cut the answer), as real APIs do it: a
    model that reasons (`reasoning` = its hidden tokens) and runs out spends the whole cap thinking and
    shows nothing; any other model is truncated at the cap."""
    if reasoning is not None:
        if reasoning + text_tokens(text) > cap:
            return "", cap, True
        return text, reasoning, False
    if text_tokens(text) > cap:
        return truncate_to_tokens(text, cap), 0, True
    return text, 0, False


def context_overflow(conv: Conversation, max_tokens: int | None, model: SimModel) -> bool:
    return conv.prompt_tokens + (max_tokens or 0) > model.context_window


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
