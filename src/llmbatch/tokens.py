"""Offline token counts for a request: an expected count (for routing and estimates) and a hard upper bound
(for budget reservations). No tokenizer files are loaded, so air-gapped workers behave the same as laptops.

Both take the OpenAI-shaped message list that prompts.build_request produces.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence  # not typing's aliases: isinstance() on them is slower
from dataclasses import dataclass
from typing import Any

# Chat framing, per message: OpenAI's documented accounting is 3 tokens per message plus the role, and 3 more
# to prime the reply. We count the role's bytes as text, and the 4th per-message token covers the dummy-prefix
# token ("▁") a SentencePiece tokenizer may emit at the start of each text segment.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3

# Image inputs, when the model's catalog quirks do not say (quirks "image_tokens" / "image_tokens_max").
# Typical: a 1024x1024 picture at OpenAI's high detail (85 + 4 tiles x 170). Max: Anthropic caps an image at
# ~1.15 megapixels, about 1,600 tokens; OpenAI's 4o tiling tops out at 85 + 8 x 170 = 1,445. Models that bill
# images at a token multiple (gpt-4o-mini, gpt-4.1-mini/nano) carry their own numbers in the catalog.
IMAGE_TOKENS_TYPICAL = 765
IMAGE_TOKENS_MAX = 1600

# Anthropic implements structured output through a tool, which adds a hidden tool-use system prompt of up to
# 346 tokens to the bill. The bound reserves for it whenever a schema is sent, whatever the provider.
SCHEMA_OVERHEAD_TOKENS_MAX = 400

# Expected English text density for BPE vocabularies of the GPT-4/Claude/Gemini generation.
ASCII_CHARS_PER_TOKEN = 4


def _texts(messages: Sequence[Mapping[str, Any]]) -> Iterable[str]:
    for m in messages:
        role = m.get("role")
        if isinstance(role, str):
            yield role
        content = m.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    yield part["text"]
        name = m.get("name")
        if isinstance(name, str):
            yield name


def count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, Mapping) and p.get("type") == "image_url")
    return n


def _schema_text(json_schema: Mapping[str, Any] | None) -> str:
    if not json_schema:
        return ""
    return json.dumps(json_schema, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _utf8_len_bound(text: str) -> int:
    """Bytes a tokenizer may see for `text`. SentencePiece models often normalize with NFKC first, which can
    expand one character into many (U+FDFA becomes 18 characters), so take the larger of the two forms."""
    if text.isascii():
        return len(text)  # one byte per character, and NFKC leaves ASCII unchanged
    return max(len(text.encode("utf-8")), len(unicodedata.normalize("NFKC", text).encode("utf-8")))


def _expected_text_tokens(text: str) -> int:
    # ASCII runs compress ~4 chars per token; other scripts (CJK, emoji, most non-Latin) run near one token per
    # character. Never more than the UTF-8 byte count, so the estimate stays below the upper bound.
    if text.isascii():
        return math.ceil(len(text) / ASCII_CHARS_PER_TOKEN)
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))  # code points above 127, counted in C
    return math.ceil((len(text) - non_ascii) / ASCII_CHARS_PER_TOKEN) + non_ascii


def estimate_text_tokens(text: str) -> int:
    """Expected tokens of a bare string (a label, an output), at least 1 for a non-empty string."""
    return _expected_text_tokens(text) if text else 0


@dataclass(frozen=True)
class InputSize:
    """A request's prompt measured once: text tokens (framing, text parts and schema) expected and at most,
    and how many images it carries (priced per model: see the image-token constants)."""

    text_est: int
    text_upper: int
    images: int


def measure_input(messages: Sequence[Mapping[str, Any]], *, json_schema: Mapping[str, Any] | None = None) -> InputSize:
    """Expected and upper-bound text tokens and the image count, in one pass over the messages.

    Why the upper bound holds: byte-level BPE (tiktoken, Claude) and SentencePiece with byte fallback (Gemini,
    Llama) emit every token for at least one byte of (normalized) UTF-8 input, so text never takes more tokens
    than bytes. The chat framing is a fixed number of special tokens per message plus the reply primer; a
    schema sent as response_format or as an Anthropic tool is billed as input too.
    """
    framing = TOKENS_PER_REPLY + TOKENS_PER_MESSAGE * len(messages)
    est = upper = framing
    for t in _texts(messages):
        est += _expected_text_tokens(t)
        upper += _utf8_len_bound(t)
    if json_schema:
        schema = _schema_text(json_schema)
        est += _expected_text_tokens(schema)
        upper += _utf8_len_bound(schema) + SCHEMA_OVERHEAD_TOKENS_MAX
    return InputSize(est, upper, count_images(messages))


def estimate_input_tokens(
    messages: Sequence[Mapping[str, Any]],
    *,
    json_schema: Mapping[str, Any] | None = None,
    image_tokens: int = IMAGE_TOKENS_TYPICAL,
) -> int:
    """The expected prompt tokens of a request (what routing prices and checks against the context window)."""
    size = measure_input(messages, json_schema=json_schema)
    return size.text_est + image_tokens * size.images


def upper_bound_input_tokens(
    messages: Sequence[Mapping[str, Any]],
    *,
    json_schema: Mapping[str, Any] | None = None,
    image_tokens: int = IMAGE_TOKENS_MAX,
) -> int:
    """A count no real tokenizer can exceed, for the budget reservation: a reservation below the real count would
    let concurrent workers overspend the cap. Images are billed at a per-model ceiling (`image_tokens`)."""
    size = measure_input(messages, json_schema=json_schema)
    return size.text_upper + image_tokens * size.images


# Expected output sizes, by task type. Routing prices each candidate with these; the completion cap (what the
# budget reserves) is max_output_tokens, never this estimate.
SUMMARY_INPUT_FRACTION = 0.25  # a summary runs to about a quarter of its input, up to the cap
EXTRACT_TOKENS_PER_FIELD = 24  # a key, a short value and JSON punctuation
EXTRACT_MIN_TOKENS = 32
CLASSIFY_EXTRA_TOKENS = 2  # end-of-turn and the odd stray whitespace/punctuation


def _schema_field_count(schema: Mapping[str, Any] | None) -> int:
    """Leaf properties in a JSON schema, counted through nested objects and array items."""
    if not isinstance(schema, Mapping):
        return 0
    count = 0
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for sub in props.values():
            inner = _schema_field_count(sub)
            count += inner if inner else 1
    items = schema.get("items")
    if isinstance(items, Mapping):
        count += _schema_field_count(items)
    return count


def expected_output_tokens(
    task_type: str,
    max_output_tokens: int,
    input_tokens_est: int,
    labels: Sequence[str] | None = None,
    *,
    json_schema: Mapping[str, Any] | None = None,
) -> int:
    """The expected visible output of a task (reasoning tokens are the model's business and added by routing).

    - classify: the longest label plus CLASSIFY_EXTRA_TOKENS (the reply is one label).
    - summarize: SUMMARY_INPUT_FRACTION of the input.
    - extract: EXTRACT_TOKENS_PER_FIELD per leaf field of the schema, at least EXTRACT_MIN_TOKENS.
    - chat (and anything else): half the output cap; a chat reply has no shape to predict from.
    Always at least 1 and at most max_output_tokens.
    """
    if task_type == "classify":
        longest = max((estimate_text_tokens(label) for label in labels or ()), default=1)
        guess = longest + CLASSIFY_EXTRA_TOKENS
    elif task_type == "summarize":
        guess = math.ceil(input_tokens_est * SUMMARY_INPUT_FRACTION)
    elif task_type == "extract":
        guess = max(EXTRACT_MIN_TOKENS, EXTRACT_TOKENS_PER_FIELD * _schema_field_count(json_schema))
    else:
        guess = math.ceil(max_output_tokens / 2)
    return max(1, min(max_output_tokens, guess))
