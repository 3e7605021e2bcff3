"""What it means for a candidate's answer to agree with the reference's, per task kind.

- classify: the same label (exact).
- extract: every field of the schema equal after normalization (strings: Unicode-casefolded, whitespace
  collapsed, trimmed; numbers: equal as numbers, 1 == 1.0; lists element-wise; objects key-wise, a missing key
  equals null). Exact.
- summarize / chat: there is no exact notion, so a judge model (the reference model by default) grades the
  candidate against the reference with the rubric below and answers PASS or FAIL. These figures are
  **judged, not exact**: they are as good as the judge.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

JUDGED_KINDS = frozenset({"summarize", "chat"})
JUDGE_MARKER = "Verdict format: answer with exactly one word, PASS or FAIL."
REFERENCE_MARKER = "<<<REFERENCE>>>"
CANDIDATE_MARKER = "<<<CANDIDATE>>>"
RUBRIC = (
    "You grade whether a CANDIDATE answer can replace a REFERENCE answer to the same task.\n"
    "PASS when the candidate (1) conveys the same key facts, conclusions and requested items as the reference, "
    "(2) adds nothing that contradicts the reference or the task input, and (3) follows the task's format and "
    "length limits. Wording, order and style do not matter. Otherwise FAIL.\n" + JUDGE_MARKER
)


def exact(kind: str) -> bool:
    return kind not in JUDGED_KINDS


def agrees(kind: str, candidate: Any, reference: Any) -> bool:
    """Exact agreement for classify and extract (judged kinds go through judge_messages instead)."""
    if kind == "classify":
        return isinstance(candidate, str) and isinstance(reference, str) and candidate.strip() == reference.strip()
    if kind == "extract":
        return _norm(candidate) == _norm(reference)
    raise ValueError(f"{kind} answers are judged, not compared exactly")


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        return " ".join(unicodedata.normalize("NFKC", v).casefold().split())
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        f = float(v)
        return round(f, 9) if math.isfinite(f) else str(f)
    if isinstance(v, list):
        return tuple(_norm(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _norm(x)) for k, x in v.items() if x is not None))
    return v


def judge_messages(task_input: str, reference: str, candidate: str) -> list[dict[str, str]]:
    """The judge's conversation: the rubric as the system message, then the task input and both answers."""
    return [
        {"role": "system", "content": RUBRIC},
        {
            "role": "user",
            "content": f"TASK INPUT:\n{task_input}\n\n{REFERENCE_MARKER}\n{reference}\n\n"
            f"{CANDIDATE_MARKER}\n{candidate}",
        },
    ]


def judge_passed(verdict: Any) -> bool:
    return isinstance(verdict, str) and verdict.strip().upper().startswith("PASS")
