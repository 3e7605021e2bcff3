"""import_litellm on a small file in LiteLLM's documented format (model_prices_and_context_window.json)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbatch.catalog import Catalog, builtin_catalog
from llmbatch.catalog.litellm_import import decimal_string, guess_tier, import_litellm, per_mtok
from llmbatch.catalog.loading import merge_document
from llmbatch.errors import CatalogError

# Written as LiteLLM writes it: JSON floats in exponent notation, per token.
FIXTURE = """{
    "sample_spec": {
        "input_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "max_input_tokens": "max input tokens, if the provider specifies it. if not default to max_tokens",
        "max_output_tokens": "max output tokens, if the provider specifies it. if not default to max_tokens",
        "max_tokens": "LEGACY parameter.",
        "mode": "one of: chat, embedding, completion, image_generation, audio_transcription",
        "output_cost_per_token": 0.0,
        "supports_vision": true
    },
    "gpt-4o-mini": {
        "cache_read_input_token_cost": 7.5e-08,
        "input_cost_per_token": 1.5e-07,
        "input_cost_per_token_batches": 7.5e-08,
        "litellm_provider": "openai",
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "max_tokens": 16384,
        "mode": "chat",
        "output_cost_per_token": 6e-07,
        "output_cost_per_token_batches": 3e-07,
        "supports_function_calling": true,
        "supports_response_schema": true,
        "supports_system_messages": true,
        "supports_vision": true
    },
    "o1-mini": {
        "cache_read_input_token_cost": 5.5e-07,
        "input_cost_per_token": 1.1e-06,
        "litellm_provider": "openai",
        "max_input_tokens": 128000,
        "max_output_tokens": 65536,
        "mode": "chat",
        "output_cost_per_token": 4.4e-06,
        "supports_reasoning": true,
        "supports_system_messages": false,
        "deprecation_date": "2025-10-27"
    },
    "claude-3-5-haiku-20241022": {
        "cache_creation_input_token_cost": 1e-06,
        "cache_read_input_token_cost": 8e-08,
        "input_cost_per_token": 8e-07,
        "litellm_provider": "anthropic",
        "max_input_tokens": 200000,
        "max_output_tokens": 8192,
        "mode": "chat",
        "output_cost_per_token": 4e-06,
        "supports_function_calling": true,
        "supports_response_schema": true
    },
    "gemini/gemini-9-flash": {
        "input_cost_per_token": 3e-07,
        "litellm_provider": "gemini",
        "max_input_tokens": 1048576,
        "max_output_tokens": 65535,
        "mode": "chat",
        "output_cost_per_token": 2.5e-06,
        "supports_vision": true,
        "deprecation_date": "2099-01-01"
    },
    "groq/llama-9-400b": {
        "input_cost_per_token": 5.9e-06,
        "litellm_provider": "groq",
        "max_tokens": 32768,
        "mode": "chat",
        "output_cost_per_token": 1.79e-05
    },
    "together_ai/meta-llama/Llama-Tiny": {
        "input_cost_per_token": 1e-08,
        "litellm_provider": "together_ai",
        "max_input_tokens": 8192,
        "mode": "chat",
        "output_cost_per_token": 2e-08
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "litellm_provider": "openai",
        "max_input_tokens": 8191,
        "mode": "embedding",
        "output_cost_per_token": 0.0
    },
    "bedrock/anthropic.claude-v2": {
        "input_cost_per_token": 8e-06,
        "litellm_provider": "bedrock",
        "max_input_tokens": 100000,
        "mode": "chat",
        "output_cost_per_token": 2.4e-05
    },
    "openai/no-context": {
        "input_cost_per_token": 1e-06,
        "litellm_provider": "openai",
        "mode": "chat",
        "output_cost_per_token": 1e-06
    }
}"""

TODAY = date(2026, 11, 21)


@pytest.fixture()
def fixture_path(tmp_path):
    p = tmp_path / "model_prices_and_context_window.json"
    p.write_text(FIXTURE, "utf-8")
    return p


@pytest.fixture()
def doc(fixture_path):
    return import_litellm(fixture_path, today=TODAY)


def by_key(doc):
    return {f"{m['provider']}/{m['model']}": m for m in doc["models"]}


def test_only_chat_models_of_supported_providers_are_imported(doc):
    assert set(by_key(doc)) == {
        "openai/gpt-4o-mini",
        "openai/o1-mini",
        "anthropic/claude-3-5-haiku-20241022",
        "gemini/gemini-9-flash",
        "groq/llama-9-400b",
        "together/meta-llama/Llama-Tiny",
    }
    assert doc["_import"]["skipped"] == {"no context window": 1, "not a chat model": 1, "provider not supported": 1}


def test_prices_convert_exactly_to_decimal_strings_per_million(doc):
    m = by_key(doc)
    assert m["openai/gpt-4o-mini"]["input_per_mtok"] == "0.15"
    assert m["openai/gpt-4o-mini"]["output_per_mtok"] == "0.6"
    assert m["openai/gpt-4o-mini"]["cached_input_per_mtok"] == "0.075"
    assert m["openai/gpt-4o-mini"]["batch_discount"] == "0.5"
    assert m["anthropic/claude-3-5-haiku-20241022"]["cache_write_per_mtok"] == "1"
    assert m["anthropic/claude-3-5-haiku-20241022"]["cached_input_per_mtok"] == "0.08"
    assert m["groq/llama-9-400b"]["output_per_mtok"] == "17.9"
    assert m["together/meta-llama/Llama-Tiny"]["input_per_mtok"] == "0.01"


def test_an_already_parsed_dict_with_floats_converts_the_same(doc):
    assert import_litellm(json.loads(FIXTURE), today=TODAY)["models"] == doc["models"]


@given(st.decimals(min_value=0, max_value=1, places=12, allow_nan=False, allow_infinity=False))
def test_per_token_float_to_per_million_is_exact(d):
    as_float = float(d)
    # the shortest decimal that round-trips the float, times 1e6, with no binary arithmetic
    assert per_mtok(as_float) == Decimal(repr(as_float)) * 1_000_000
    assert Decimal(decimal_string(per_mtok(as_float))) == Decimal(repr(as_float)) * 1_000_000


def test_decimal_string_is_plain_notation():
    assert decimal_string(Decimal("1E+1")) == "10"
    assert decimal_string(Decimal("0.150000")) == "0.15"
    assert decimal_string(Decimal("0")) == "0"


def test_limits_capabilities_and_quirks(doc):
    m = by_key(doc)
    mini = m["openai/gpt-4o-mini"]
    assert (mini["context_window"], mini["max_output_tokens"]) == (128000, 16384)
    assert set(mini["capabilities"]) == {"vision", "json_schema", "system_role", "tools", "temperature"}
    o1 = m["openai/o1-mini"]
    assert o1["reasoning"] is True
    assert "system_role" not in o1["capabilities"] and "temperature" not in o1["capabilities"]
    assert o1["quirks"]["system_role"] == "merge_into_user"
    assert m["groq/llama-9-400b"]["context_window"] == 32768  # from legacy max_tokens
    assert m["together/meta-llama/Llama-Tiny"]["max_output_tokens"] == 8192  # no max output: the context
    assert m["anthropic/claude-3-5-haiku-20241022"]["quirks"]["max_tokens_required"] is True


def test_status_from_deprecation_date(doc):
    m = by_key(doc)
    assert m["openai/o1-mini"]["status"] == "retired"
    assert m["gemini/gemini-9-flash"]["status"] == "deprecated"
    assert m["groq/llama-9-400b"]["status"] == "active"


def test_curated_tiers_and_quirks_survive_and_new_models_get_a_price_tier(doc):
    m = by_key(doc)
    # claude-3-5-haiku's blended price would say standard anyway; o1-mini's curated tier is standard
    assert m["anthropic/claude-3-5-haiku-20241022"]["tier"] == "standard"
    assert m["openai/o1-mini"]["tier"] == "standard"
    assert m["openai/o1-mini"]["expected_reasoning_tokens"] == 768  # ours, not the import default
    assert m["openai/gpt-4o-mini"]["quirks"]["image_tokens_max"] == 48169
    assert m["together/meta-llama/Llama-Tiny"]["tier"] == "mini"
    assert m["gemini/gemini-9-flash"]["tier"] == "standard"  # (3 x 0.3 + 2.5) / 4 = 0.85
    assert m["groq/llama-9-400b"]["tier"] == "frontier"


def test_curated_tier_wins_over_the_heuristic():
    custom = builtin_catalog().with_overrides(models={"openai/gpt-4o-mini": {"tier": "frontier"}})
    out = import_litellm(json.loads(FIXTURE), existing=custom, today=TODAY)
    assert by_key(out)["openai/gpt-4o-mini"]["tier"] == "frontier"


def test_heuristic_reproduces_every_builtin_tier():
    for m in builtin_catalog():
        assert guess_tier(m.input_per_mtok, m.output_per_mtok) is m.tier, m.key


def test_provider_filter_accepts_our_names_and_litellm_names():
    out = import_litellm(json.loads(FIXTURE), providers={"together_ai", "groq"}, today=TODAY)
    assert {m["provider"] for m in out["models"]} == {"together", "groq"}
    assert set(out["providers"]) == {"together", "groq"}


def test_the_document_loads_into_a_catalog(doc):
    cat = merge_document(builtin_catalog(), doc, source="test")
    assert isinstance(cat, Catalog)
    assert cat.get("gemini-9-flash").input_per_mtok == Decimal("0.3")
    assert cat.get("openai/gpt-4o-mini").output_per_mtok == Decimal("0.6")


def test_bad_files_raise_catalog_errors(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        import_litellm(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", "utf-8")
    with pytest.raises(CatalogError, match="not JSON"):
        import_litellm(bad)


# gemini-2.5-pro as older price files (LiteLLM 1.74) carry it: no `_batches` prices, no tier cache prices.
OLD_GEMINI_PRO = {
    "gemini/gemini-2.5-pro": {
        "input_cost_per_token": 1.25e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-07,
        "input_cost_per_token_above_200k_tokens": 2.5e-06,
        "output_cost_per_token_above_200k_tokens": 1.5e-05,
        "litellm_provider": "gemini",
        "max_input_tokens": 1048576,
        "max_output_tokens": 65536,
        "mode": "chat",
    }
}


def test_a_file_without_batch_prices_keeps_the_known_batch_discount():
    assert builtin_catalog().find("gemini/gemini-2.5-pro").batch_discount == Decimal("0.5")
    m = by_key(import_litellm(OLD_GEMINI_PRO, today=TODAY))["gemini/gemini-2.5-pro"]
    assert m["batch_discount"] == "0.5"  # the file has no opinion: what we know stays
    spec = {k: dict(v) for k, v in OLD_GEMINI_PRO.items()}
    spec["gemini/gemini-2.5-pro"].update(input_cost_per_token_batches=1e-06, output_cost_per_token_batches=8e-06)
    m = by_key(import_litellm(spec, today=TODAY))["gemini/gemini-2.5-pro"]
    assert m["batch_discount"] == "0.8"  # the file's own batch prices win
