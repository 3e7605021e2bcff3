"""Deterministic, plausible answers read from the prompt conventions of llmbatch.prompts.

The same conversation always gets the same answer. Weaker models err on purpose: with probability
`label_error_rate` a classify answer is outside the allowed labels, with `json_error_rate` an extract
answer is not valid JSON; the draw is a hash of (model, prompt), so it is stable across runs. Besides,
valid answers can be wrong (`ErrorRates.wrong`, see simulator.quality): another label, a changed field, a
summary that misses the point; `scored_answer` also says how confident the model is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..prompts import LABELS_MARKER, SCHEMA_MARKER, SUMMARY_MARKER
from . import quality
from .conversation import Conversation
from .schema_fill import fill
from .tokens import stable_hash, unit_interval

_WORD_BUDGET = re.compile(r"at most (\d+) words")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z']+")
_NEGATORS = {"not", "no", "never", "hardly", "isn't", "wasn't", "don't", "doesn't", "didn't", "won't", "can't"}
_POSITIVE = {
    "good",
    "great",
    "excellent",
    "amazing",
    "awesome",
    "love",
    "loved",
    "loves",
    "like",
    "liked",
    "happy",
    "fantastic",
    "wonderful",
    "best",
    "perfect",
    "recommend",
    "pleased",
    "satisfied",
    "enjoy",
    "enjoyed",
    "nice",
    "superb",
    "brilliant",
    "fast",
    "helpful",
    "delighted",
    "glad",
    "works",
    "outstanding",
}
_NEGATIVE = {
    "bad",
    "terrible",
    "awful",
    "horrible",
    "hate",
    "hated",
    "worst",
    "poor",
    "broken",
    "disappointed",
    "disappointing",
    "slow",
    "useless",
    "refund",
    "angry",
    "annoyed",
    "unhappy",
    "waste",
    "defective",
    "crashed",
    "crashes",
    "fails",
    "failed",
    "rude",
    "sad",
    "problem",
    "issue",
    "complaint",
}
_POSITIVE_LABELS = ("positive", "pos", "good", "favorable", "favourable")
_NEGATIVE_LABELS = ("negative", "neg", "bad", "unfavorable", "unfavourable")
_NEUTRAL_LABELS = ("neutral", "mixed", "none", "other")
_WRONG_LABELS = ("unsure", "unknown", "I am not sure", "none of the above")
_CHAT_CLOSINGS = (
    "In short, the answer depends on the details, but the main point stands.",
    "Happy to expand on any part of this if it helps.",
    "The key idea is to start simple and refine from there.",
    "Let me know if you want a more detailed walkthrough.",
    "I hope that gives you a useful starting point.",
)


@dataclass(frozen=True)
class ErrorRates:
    label: float = 0.0
    json: float = 0.0
    wrong: float = 0.0  # valid but wrong answers, at this mean rate (scaled by each input's difficulty)


def answer(conv: Conversation, *, model: str, rates: ErrorRates, schema: Any = None, json_mode: bool = False) -> str:
    """The model's reply text. `schema` comes from a structured-output request parameter, if any."""
    return scored_answer(conv, model=model, rates=rates, schema=schema, json_mode=json_mode)[0]


def scored_answer(
    conv: Conversation, *, model: str, rates: ErrorRates, schema: Any = None, json_mode: bool = False
) -> tuple[str, float]:
    """(the reply text, the probability the model puts on it). See simulator.quality."""
    instructions = conv.all_text()
    source = _task_input(conv.last_user_text())
    draw = unit_interval(model, instructions)
    wrong = quality.is_wrong(model, source, rates.wrong)
    conf = quality.confidence(model, source, wrong)

    judged = quality_judge(instructions, conv.last_user_text())
    if judged is not None:
        return judged, quality.confidence(model, source, False)

    labels = _labels(instructions)
    if labels is not None:
        if draw < rates.label:
            return next(w for w in _WRONG_LABELS if w not in labels), min(conf, 0.3)
        right = _pick_label(labels, source)
        return (quality.wrong_label(model, source, right, labels) if wrong else right), conf

    prompt_schema = _schema(instructions)
    if schema is not None or prompt_schema is not None:
        obj = fill(schema if schema is not None else prompt_schema, source)
        if wrong:
            obj = quality.wrong_object(model, source, obj)
        text = json.dumps(obj, ensure_ascii=False)
        if draw < rates.json:
            # A strict prefix of one JSON object is never valid JSON, however lenient the parser.
            return text[: max(1, len(text) // 2)], min(conf, 0.3)
        return text, conf

    budget = _word_budget(instructions)
    if budget is not None:
        text = _summarize(source, budget)
        return (quality.wrong_text(text) if wrong else text), conf

    reply = _chat(source)
    if wrong:
        reply = quality.wrong_text(reply)
    return (json.dumps({"answer": reply}) if json_mode else reply), conf


def quality_judge(instructions: str, user_text: str) -> str | None:
    """A judge request (llmbatch.quality.agreement's rubric): PASS/FAIL by the simulated judge, else None."""
    from ..quality.agreement import CANDIDATE_MARKER, JUDGE_MARKER, REFERENCE_MARKER

    if JUDGE_MARKER not in instructions:
        return None
    ref_at, cand_at = user_text.find(REFERENCE_MARKER), user_text.find(CANDIDATE_MARKER)
    if ref_at < 0 or cand_at < ref_at:
        return quality.JUDGE_FAIL
    reference = user_text[ref_at + len(REFERENCE_MARKER) : cand_at]
    return quality.judge(user_text[cand_at + len(CANDIDATE_MARKER) :], reference)


def _marker_line(text: str, marker: str) -> str | None:
    at = text.rfind(marker)
    if at < 0:
        return None
    end = text.find("\n", at)
    return text[at + len(marker) : end if end >= 0 else len(text)].strip()


def _labels(text: str) -> list[str] | None:
    raw = _marker_line(text, LABELS_MARKER)
    if raw is None:
        return None
    try:
        labels = json.loads(raw)
    except ValueError:
        return None
    if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
        return labels
    return None


def _schema(text: str) -> dict | None:
    raw = _marker_line(text, SCHEMA_MARKER)
    if raw is None:
        return None
    try:
        schema = json.loads(raw)
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def _word_budget(text: str) -> int | None:
    at = text.find(SUMMARY_MARKER)
    if at < 0:
        return None
    m = _WORD_BUDGET.search(text, at)
    return int(m.group(1)) if m else 50


def _task_input(user_text: str) -> str:
    """The text the task is about. When the instructions were merged into the user message (o1 models
    take no system role), they come first and end with a marker line; the input follows it."""
    cut = -1
    for marker in (LABELS_MARKER, SCHEMA_MARKER, SUMMARY_MARKER):
        at = user_text.rfind(marker)
        if at >= 0:
            end = user_text.find("\n", at)
            cut = max(cut, end if end >= 0 else len(user_text))
    return user_text[cut + 1 :].strip() if cut >= 0 else user_text


def _pick_label(labels: list[str], text: str) -> str:
    by_lower = {label.lower(): label for label in labels}
    pos = next((by_lower[x] for x in _POSITIVE_LABELS if x in by_lower), None)
    neg = next((by_lower[x] for x in _NEGATIVE_LABELS if x in by_lower), None)
    if pos is not None and neg is not None:
        score = _sentiment(text)
        if score > 0:
            return pos
        if score < 0:
            return neg
        neutral = next((by_lower[x] for x in _NEUTRAL_LABELS if x in by_lower), None)
        if neutral is not None:
            return neutral
    lowered = text.lower()
    best, best_count = None, 0
    for label in labels:
        if not label.strip():
            continue
        count = len(re.findall(rf"(?<!\w){re.escape(label.lower())}(?!\w)", lowered))
        if count > best_count:
            best, best_count = label, count
    if best is not None:
        return best
    return labels[stable_hash(text) % len(labels)]


def _sentiment(text: str) -> int:
    score, flip = 0, 0
    for word in _WORD.findall(text.lower()):
        if word in _NEGATORS:
            flip = 3  # a negator turns the next few words around ("not very good")
            continue
        sign = 1 if word in _POSITIVE else -1 if word in _NEGATIVE else 0
        score += -sign if flip else sign
        flip = max(0, flip - 1)
    return score


def _summarize(text: str, max_words: int) -> str:
    out: list[str] = []
    used = 0
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        if not words:
            continue
        if used + len(words) > max_words:
            if not out:
                out.append(" ".join(words[:max_words]))
            break
        out.append(" ".join(words))
        used += len(words)
    return " ".join(out)


def _chat(text: str) -> str:
    words = text.split()
    if not words:
        return "Hello! How can I help you today?"
    gist = " ".join(words[:12]) + ("..." if len(words) > 12 else "")
    closing = _CHAT_CLOSINGS[stable_hash(text) % len(_CHAT_CLOSINGS)]
    return f'You asked about "{gist}". {closing}'
