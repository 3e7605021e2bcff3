"""Scrub secrets out of any text before it becomes an exception message.

Provider error bodies sometimes echo what they were sent ("Incorrect API key provided: sk-abc...xyz"), and
transport errors can quote headers or URLs. Every message an adapter raises goes through `scrub`: `redact`
removes the adapter's own key (verbatim, URL-encoded, and base64-encoded at any alignment, as in a Basic
auth header) plus anything shaped like a credential, and only then is the text trimmed. Trimming first
would cut a key that straddles the cut into a fragment no rule recognises, and store that fragment.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from typing import Iterable
from urllib.parse import quote, quote_plus

from ..terminal_text import printable

REDACTED = "[REDACTED]"

# Shapes of credentials worth scrubbing even when they are not our key (another provider's key echoed back,
# a proxy's token). Ordered from the most specific to the most generic.
_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?i)\b(Bearer)(\s+)[^\s\"',;]+"),
    re.compile(
        r"(?i)\b(x-api-key|x-goog-api-key|api-key|authorization)(\"?\s*[:=]\s*\"?)(?!Bearer\s|\[REDACTED\])[^\s\"',;&]+"
    ),
    re.compile(r"(?i)\b((?:api_?)?key|token|access_token)=[^\s\"'&]+"),
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}"),  # OpenAI / Anthropic (sk-ant-...), incl. masked forms sk-ab***yz
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),  # Google API keys
    re.compile(r"\bgsk_[A-Za-z0-9]{10,}"),  # Groq
)

# Short strings would redact ordinary words; real keys are far longer.
_MIN_SECRET_LEN = 6


def _replace(match: re.Match[str]) -> str:
    # Keep the field name so the message still says *what* was scrubbed ("x-api-key: [REDACTED]").
    if match.re.groups >= 2 and match.group(2) is not None:
        return f"{match.group(1)}{match.group(2)}{REDACTED}"
    if match.re.groups == 1:
        return f"{match.group(1)}={REDACTED}"
    return REDACTED


def _base64_cores(secret: bytes) -> set[str]:
    """The characters of base64(prefix + secret) that depend on the secret alone, for each of the three
    alignments a prefix can give (b64 of "user:KEY" puts KEY at any offset), standard and URL-safe."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + secret).decode("ascii")
        core = encoded[-(-8 * offset // 6) : 8 * (offset + len(secret)) // 6]
        cores.add(core)
        cores.add(core.translate(str.maketrans("+/", "-_")))
    return cores


@lru_cache(maxsize=64)
def _secret_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for every form of every secret; percent-escapes match in either case (%2F and %2f)."""
    exact: set[str] = set()
    encoded: set[str] = set()
    for secret in secrets:
        exact.add(secret)
        exact |= _base64_cores(secret.encode("utf-8"))
        for form in (quote(secret, safe=""), quote(secret), quote_plus(secret, safe=""), quote_plus(secret)):
            if form != secret:
                encoded.add(form)
    alternatives = [re.escape(s) for s in sorted(exact, key=len, reverse=True) if len(s) >= _MIN_SECRET_LEN]
    alternatives += ["(?i:" + re.escape(s) + ")" for s in sorted(encoded, key=len, reverse=True)]
    return re.compile("|".join(alternatives)) if alternatives else None


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret (in any of its encoded forms) and every credential-shaped token
    replaced by [REDACTED]."""
    wanted = tuple(sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}))
    pattern = _secret_pattern(wanted) if wanted else None
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for pattern in _PATTERNS:
        text = pattern.sub(_replace, text)
    return text


def trim(text: str, limit: int = 300) -> str:
    """One line, at most `limit` characters: provider messages can be pages of HTML from a proxy.
    Only for text without secrets: provider text goes through `scrub`."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def scrub(text: str, secrets: Iterable[str | None] = (), limit: int = 300) -> str:
    """Provider or server text ready to store or show: secrets redacted first, then whitespace folded into one
    line, control characters escaped (an error message is printed on a terminal) and the result trimmed."""
    return trim(printable(" ".join(redact(text, secrets).split())), limit)
