"""The simulator's quality model: valid answers that are nevertheless wrong, and how sure the model says it is.

Every draw is a hash, so the same (model, input) always gets the same verdict in every process:

- **difficulty** `d` in [0, 1) is a property of the input alone (every model finds the same inputs hard);
- a model answers wrongly with probability `wrong_rate x 2d` (mean `wrong_rate`, none on the easiest inputs,
  twice the rate on the hardest); `wrong_rate` comes from its tier and a per-model factor in [0.7, 1.3]
  (see dialects.base.error_rates), so no model is perfect, the reference included;
- a wrong answer is *valid*: another label of the set, one extracted field changed, a summary that keeps
  only its last sentence, a chat reply about something else;
- the **confidence** (the probability the model gives its answer, returned as token log-probabilities when
  asked) falls with difficulty and is lower on wrong answers, with noise: the two overlap, so a threshold
  catches most wrong answers, not all, and escalates some right ones.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

from .tokens import stable_hash, unit_interval

# Tier shares of SimulatorConfig.wrong_answer_rate (the mini tier's rate).
TIER_WRONG_SHARE = {"mini": 1.0, "standard": 0.3, "frontier": 0.1}
JUDGE_PASS, JUDGE_FAIL = "PASS", "FAIL"


def difficulty(source: str) -> float:
    return unit_interval("difficulty", source)


def model_factor(model: str) -> float:
    """Models of one tier differ: a stable factor in [0.7, 1.3]."""
    return 0.7 + 0.6 * unit_interval("model-quality", model)


def is_wrong(model: str, source: str, rate: float) -> bool:
    if rate <= 0:
        return False
    return unit_interval("wrong", model, source) < min(0.95, rate * 2 * difficulty(source))


def confidence(model: str, source: str, wrong: bool) -> float:
    """The probability the model puts on its own answer, in (0, 1]."""
    d, z = difficulty(source), unit_interval("confidence", model, source)
    p = 0.7 - 0.3 * d - 0.45 * z if wrong else 0.98 - 0.35 * d - 0.25 * z
    return min(1.0, max(0.01, p))


def logprob(p: float) -> float:
    return math.log(p)


def wrong_label(model: str, source: str, right: str, labels: list[str]) -> str:
    others = [x for x in labels if x != right]
    if not others:
        return right
    return others[stable_hash("wrong-label", model, source) % len(others)]


def wrong_object(model: str, source: str, obj: Any) -> Any:
    """The extracted object with one scalar field changed (still valid against most schemas: same type)."""
    if not isinstance(obj, dict) or not obj:
        return obj
    out = copy.deepcopy(obj)
    keys = sorted(out)
    key = keys[stable_hash("wrong-field", model, source) % len(keys)]
    v = out[key]
    if isinstance(v, bool):
        out[key] = not v
    elif isinstance(v, int):
        out[key] = v + 1
    elif isinstance(v, float):
        out[key] = v + 1.0
    elif isinstance(v, str):
        out[key] = (v + " (unverified)") if v else "unknown"
    return out


def wrong_text(text: str) -> str:
    """A summary or reply that misses the point: only its last sentence survives, reversed in word order."""
    words = text.split()
    if len(words) < 2:
        return text + " (unsure)"
    return " ".join(reversed(words[len(words) // 2 :]))


def judge(candidate: str, reference: str) -> str:
    """The simulated judge's verdict: PASS when the candidate's words follow the reference's closely
    (difflib's similarity of the two word sequences >= 0.6) -- a crude but deterministic stand-in for the
    rubric's "same key content"."""
    a, b = candidate.lower().split(), reference.lower().split()
    if not a and not b:
        return JUDGE_PASS
    return JUDGE_PASS if difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= 0.6 else JUDGE_FAIL
