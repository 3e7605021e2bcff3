"""load_catalog: builtin, then catalog_file (ours or LiteLLM's), then [providers]/[models] from settings."""

from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest

from llmbatch.catalog import builtin_catalog
from llmbatch.catalog.loading import clear_cache, load_catalog
from llmbatch.config import Settings
from llmbatch.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_defaults_to_the_builtin_catalog():
    cat = load_catalog(Settings())
    assert {m.key for m in cat} == {m.key for m in builtin_catalog()}


def test_settings_override_a_field_and_add_a_provider_and_model():
    settings = Settings(
        providers={"vllm": {"api": "openai", "base_url": "http://gpu-box:8000/v1", "key_env": "VLLM_API_KEY"}},
        models={
            "gpt-4o-mini": {"input_per_mtok": "0.2"},
            "vllm/llama-3.1-70b": {
                "tier": "standard",
                "input_per_mtok": 0.2,
                "output_per_mtok": "0.20",
                "context_window": 131072,
                "max_output_tokens": 8192,
                "capabilities": ["system_role", "temperature"],
            },
        },
    )
    cat = load_catalog(settings)
    assert cat.get("gpt-4o-mini").input_per_mtok == Decimal("0.2")
    assert cat.get("gpt-4o-mini").output_per_mtok == Decimal("0.60")  # untouched fields stay
    added = cat.get("vllm/llama-3.1-70b")
    assert added.api == "openai"  # defaulted from its provider
    assert added.input_per_mtok == Decimal("0.2")


def test_catalog_file_in_our_shape_adds_and_replaces(tmp_path):
    doc = {
        "providers": {"local": {"api": "openai", "base_url": "http://127.0.0.1:8000/v1", "key_env": None}},
        "models": [
            {**builtin_catalog().get("gpt-4o").model_dump(mode="json"), "input_per_mtok": "2.00"},
            {
                "provider": "local",
                "model": "tiny",
                "api": "openai",
                "tier": "mini",
                "input_per_mtok": "0",
                "output_per_mtok": "0",
                "context_window": 4096,
                "max_output_tokens": 1024,
            },
        ],
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc), "utf-8")
    cat = load_catalog(Settings(catalog_file=str(path)))
    assert cat.get("gpt-4o").input_per_mtok == Decimal("2.00")
    assert cat.get("local/tiny").tier.value == "mini"
    assert len(cat) == len(builtin_catalog()) + 1


def test_settings_overrides_win_over_the_catalog_file(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps({"models": [{**builtin_catalog().get("gpt-4o").model_dump(mode="json"), "input_per_mtok": "2.00"}]}),
        "utf-8",
    )
    cat = load_catalog(Settings(catalog_file=str(path), models={"openai/gpt-4o": {"input_per_mtok": "3"}}))
    assert cat.get("gpt-4o").input_per_mtok == Decimal("3")


def test_a_litellm_file_is_imported_on_the_fly(tmp_path):
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(
        json.dumps(
            {
                "groq/brand-new": {
                    "input_cost_per_token": 1e-07,
                    "output_cost_per_token": 2e-07,
                    "mode": "chat",
                    "litellm_provider": "groq",
                    "max_input_tokens": 32768,
                    "max_output_tokens": 4096,
                },
            }
        ),
        "utf-8",
    )
    cat = load_catalog(Settings(catalog_file=str(path)))
    assert cat.get("groq/brand-new").input_per_mtok == Decimal("0.1")


def test_cached_per_settings_and_reloaded_when_the_file_changes(tmp_path):
    path = tmp_path / "catalog.json"

    def write(price: str) -> None:
        path.write_text(
            json.dumps(
                {"models": [{**builtin_catalog().get("gpt-4o").model_dump(mode="json"), "input_per_mtok": price}]}
            ),
            "utf-8",
        )

    write("2.00")
    settings = Settings(catalog_file=str(path))
    first = load_catalog(settings)
    assert load_catalog(Settings(catalog_file=str(path))) is first
    write("1.00")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load_catalog(settings).get("gpt-4o").input_per_mtok == Decimal("1.00")
    assert load_catalog(Settings(models={"gpt-4o": {"input_per_mtok": "9"}})) is not load_catalog(Settings())


def test_errors_name_the_setting_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="catalog_file .*missing.json"):
        load_catalog(Settings(catalog_file=str(tmp_path / "missing.json")))
    with pytest.raises(ConfigError, match=r'\[models."gpt-4o"\]: input_per_mtok'):
        load_catalog(Settings(models={"gpt-4o": {"input_per_mtok": "cheap"}}))
    with pytest.raises(ConfigError, match=r'\[models."nowhere/x"\].*not configured'):
        load_catalog(
            Settings(
                models={
                    "nowhere/x": {
                        "api": "openai",
                        "tier": "mini",
                        "input_per_mtok": "1",
                        "output_per_mtok": "1",
                        "context_window": 10,
                        "max_output_tokens": 10,
                    }
                }
            )
        )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": [{"provider": "openai", "model": "x"}]}), "utf-8")
    with pytest.raises(ConfigError, match="model openai/x"):
        load_catalog(Settings(catalog_file=str(bad)))
