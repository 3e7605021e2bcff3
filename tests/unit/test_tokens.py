"""Token estimates: the upper bound must hold against real tokenizers; the estimate must stay under it."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbatch.models import TaskLine
from llmbatch.prompts import build_request
from llmbatch.tokens import (
    IMAGE_TOKENS_MAX,
    SCHEMA_OVERHEAD_TOKENS_MAX,
    estimate_input_tokens,
    estimate_text_tokens,
    expected_output_tokens,
    upper_bound_input_tokens,
)

# Text that stresses tokenizers: multi-byte scripts, emoji, combining marks, NFKC-expanding ligatures, whitespace.
TRICKY = ["ﷺ", "ﬃ", "①", "é", "ñ", "日本語", "😀", "👩‍👩‍👧", "\u0301", "  \t\n", "Ａ", "㌀", "x" * 50]
texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TRICKY + ["the ", "cat ", "tokens ", '{"a": 1}']), max_size=60).map("".join),
)
roles = st.sampled_from(["system", "user", "assistant", "developer"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), min_size=1, max_size=5)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Summarize the text below in at most 120 words. Reply with the summary only.",
    '{"name": "Ada", "age": 36, "tags": ["x", "y"]}',
    "日本語のテキストです。中文文本。한국어 텍스트.",
    "emoji 😀🎉👩‍👩‍👧 and accents: café naïve façade",
] * 40


@pytest.fixture(scope="module")
def byte_bpe():
    """A byte-level BPE (the GPT/Claude family's scheme), trained here so no vocabulary is downloaded."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return lambda s: len(tok.encode(s).ids)


@pytest.fixture(scope="module")
def sentencepiece_bf():
    """SentencePiece BPE with byte fallback and the default NFKC normalizer (the Gemini/Llama family's scheme)."""
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=600,
        byte_fallback=True,
        model_type="bpe",
        minloglevel=2,
        hard_vocab_limit=False,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return lambda s: len(sp.encode(s))


def openai_style_count(msgs, encode) -> int:
    """OpenAI's documented chat accounting: 3 per message + encoded role + encoded content, + 3 for the reply."""
    return sum(3 + encode(m["role"]) + encode(m["content"]) for m in msgs) + 3


def template_style_count(msgs, encode) -> int:
    """A chat template with special tokens (Gemma/Llama style): 3 framing specials + a role token per message,
    each content encoded on its own (so each pays SentencePiece's dummy-prefix token), + 3 for the reply."""
    return sum(3 + 1 + encode(m["content"]) for m in msgs) + 3


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=messages)
def test_upper_bound_holds_for_byte_level_bpe(byte_bpe, msgs):
    assert upper_bound_input_tokens(msgs) >= openai_style_count(msgs, byte_bpe)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=messages)
def test_upper_bound_holds_for_sentencepiece_with_byte_fallback(sentencepiece_bf, msgs):
    assert upper_bound_input_tokens(msgs) >= template_style_count(msgs, sentencepiece_bf)


def test_nfkc_expansion_is_covered(sentencepiece_bf):
    # U+FDFA is 3 UTF-8 bytes but NFKC makes it 18 characters; a raw byte count would be too low.
    msgs = [{"role": "user", "content": "ﷺ" * 20}]
    assert sentencepiece_bf("ﷺ" * 20) > len(("ﷺ" * 20).encode())
    assert upper_bound_input_tokens(msgs) >= template_style_count(msgs, sentencepiece_bf)


@given(msgs=messages)
def test_estimate_never_exceeds_upper_bound(msgs):
    assert 0 < estimate_input_tokens(msgs) <= upper_bound_input_tokens(msgs)


def test_upper_bound_formula_on_ascii():
    msgs = [{"role": "system", "content": "abc"}, {"role": "user", "content": "hello"}]
    # the documented formula: bytes of all text (roles included) + 4 per message + 3
    assert upper_bound_input_tokens(msgs) == len("systemabcuserhello") + 2 * 4 + 3


def test_images_and_schema_add_to_the_bound():
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}] * 2
    plain = upper_bound_input_tokens([{"role": "user", "content": "what is this?what is this?"}])
    assert upper_bound_input_tokens([{"role": "user", "content": parts}]) == plain + 2 * IMAGE_TOKENS_MAX
    assert upper_bound_input_tokens([{"role": "user", "content": parts}], image_tokens=48169) == plain + 2 * 48169
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    with_schema = upper_bound_input_tokens([{"role": "user", "content": "x"}], json_schema=schema)
    without = upper_bound_input_tokens([{"role": "user", "content": "x"}])
    assert with_schema - without >= SCHEMA_OVERHEAD_TOKENS_MAX + len(
        '{"properties":{"a":{"type":"string"}},"type":"object"}'
    )


def test_estimate_is_about_four_chars_per_token_for_english():
    text = "word " * 4000  # 20,000 chars
    est = estimate_input_tokens([{"role": "user", "content": text}])
    assert 4900 <= est <= 5100


def test_estimate_counts_cjk_near_one_token_per_char():
    assert estimate_text_tokens("日本語のテキスト") == 8


def test_build_request_messages_are_counted():
    task = TaskLine(id="1", task="classify", input="great product", labels=["positive", "negative"])
    req = build_request(task)
    assert upper_bound_input_tokens(req.messages) > len("great product")


@given(
    task=st.sampled_from(["classify", "summarize", "extract", "chat"]),
    max_out=st.integers(1, 100_000),
    inp=st.integers(0, 2_000_000),
    labels=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5),
)
def test_expected_output_is_within_one_and_the_cap(task, max_out, inp, labels):
    assert 1 <= expected_output_tokens(task, max_out, inp, labels) <= max_out


def test_expected_output_by_task_type():
    assert expected_output_tokens("classify", 16, 500, ["positive", "negative", "neutral"]) == 2 + 2
    assert expected_output_tokens("summarize", 300, 400) == 100
    assert expected_output_tokens("summarize", 300, 100_000) == 300
    schema = {
        "type": "object",
        "properties": {"a": {}, "b": {}, "c": {"type": "object", "properties": {"d": {}, "e": {}}}},
    }
    assert expected_output_tokens("extract", 1024, 50, json_schema=schema) == 4 * 24
    assert expected_output_tokens("extract", 10, 50, json_schema=schema) == 10
    assert expected_output_tokens("chat", 1024, 50) == 512
