"""route() on the builtin catalog and on small hand-made catalogs."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from llmbatch.catalog import Catalog, ModelInfo, ProviderInfo, builtin_catalog
from llmbatch.catalog.pricing import upper_bound_picos
from llmbatch.models import ChatRequest, TaskLine, Tier
from llmbatch.prompts import build_request
from llmbatch.providers import available_credentials
from llmbatch.routing import Health, escalation_order, route
from llmbatch.tokens import upper_bound_input_tokens

NOW = 1_800_000_000.0  # 2027-01-15: after every builtin deprecation date


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    # gpt-4o and gpt-4o-mini are retired in the shipped catalog; these tests use them as ordinary models
    # to check other rules, so they are made active here (retirement has its own tests below).
    live = {"status": "active", "deprecation_date": None}
    return builtin_catalog().with_overrides(models={"openai/gpt-4o": live, "openai/gpt-4o-mini": live})


@pytest.fixture(scope="module")
def all_creds(catalog) -> set[str]:
    return set(catalog.providers)


def decide(task: TaskLine, catalog: Catalog, creds: set[str], **kw):
    return route(task, build_request(task), catalog, credentials=creds, now=NOW, **kw)


def keys(decision) -> list[str]:
    return [c.model.key for c in decision.candidates]


def test_short_classify_goes_to_the_cheapest_active_mini_model(catalog, all_creds):
    task = TaskLine(id="r", task="classify", input="I love it", labels=["positive", "negative", "neutral"])
    d = decide(task, catalog, all_creds)
    first = d.candidates[0]
    assert first.model.key == "groq/llama-3.1-8b-instant"
    assert first.model.tier is Tier.mini
    assert first.reason.startswith("cheapest eligible: mini tier, est $")
    costs = [c.estimated_picos for c in d.candidates]
    assert costs == sorted(costs)


def test_without_groq_key_the_next_cheapest_wins_and_the_reason_names_the_env_var(catalog, all_creds):
    task = TaskLine(id="r", task="classify", input="I love it", labels=["positive", "negative"])
    d = decide(task, catalog, all_creds - {"groq"})
    assert d.candidates[0].model.provider != "groq"
    groq = {r.model.key: r.reason for r in d.rejected}
    assert groq["groq/llama-3.1-8b-instant"] == "no credentials (set GROQ_API_KEY)"


def test_300k_token_input_only_goes_to_big_context_models(catalog, all_creds):
    task = TaskLine(id="s", task="summarize", input="word " * 240_000)  # ~300k tokens with the prompt
    d = decide(task, catalog, all_creds)
    assert d.candidates
    for c in d.candidates:
        assert c.model.context_window >= 300_000
        assert c.input_tokens_est >= 300_000
    small = {r.model.key: r for r in d.rejected if r.rule == "context"}
    assert "openai/gpt-4o-mini" in small
    assert small["openai/gpt-4o-mini"].reason.startswith("context 128,000 < ")


def test_image_goes_to_vision_models_only(catalog, all_creds):
    task = TaskLine(id="i", task="chat", input="what is in this picture?", images=["https://example.com/a.png"])
    d = decide(task, catalog, all_creds)
    assert d.candidates and all(c.model.has("vision") for c in d.candidates)
    assert {r.reason for r in d.rejected if r.model.key == "groq/llama-3.1-8b-instant"} == {"no vision"}


def test_gpt4o_mini_images_are_priced_at_its_token_multiple(catalog, all_creds):
    # gpt-4o-mini bills an image at ~33x the tokens of gpt-4o, so it is not the cheap choice for pictures.
    task = TaskLine(
        id="i", task="chat", input="describe", images=["https://example.com/a.png"], models=["gpt-4o-mini", "gpt-4o"]
    )
    d = decide(task, catalog, all_creds)
    by_key = {c.model.key: c for c in d.candidates}
    mini = by_key["openai/gpt-4o-mini"]
    assert mini.input_tokens_est > 25_000
    assert mini.input_tokens_upper >= 48_169
    assert mini.upper_bound_picos == upper_bound_picos(mini.model, mini.input_tokens_upper, mini.completion_cap)


def test_min_tier_frontier_never_routes_to_mini(catalog, all_creds):
    for kw, line_tier in (({}, Tier.frontier), ({"job_min_tier": Tier.frontier}, None)):
        task = TaskLine(id="f", task="chat", input="hard question", min_tier=line_tier)
        d = decide(task, catalog, all_creds, **kw)
        assert d.candidates
        assert all(c.model.tier is Tier.frontier for c in d.candidates)
        assert any(r.reason == "tier mini < frontier" for r in d.rejected)


def test_line_min_tier_wins_over_job_min_tier(catalog, all_creds):
    task = TaskLine(id="f", task="chat", input="easy", min_tier=Tier.mini)
    d = decide(task, catalog, all_creds, job_min_tier=Tier.frontier)
    assert d.candidates[0].model.tier is Tier.mini


def test_pinned_retired_model_is_allowed_with_a_warning(catalog, all_creds):
    task = TaskLine(id="p", task="chat", input="hi", model="o1-preview")
    d = decide(task, catalog, all_creds)
    assert keys(d) == ["openai/o1-preview"]
    assert any("o1-preview" in w and "retired" in w for w in d.warnings)


def test_retired_and_deprecated_models_are_not_routed_unless_pinned(catalog, all_creds):
    task = TaskLine(id="p", task="chat", input="hi")
    d = decide(task, catalog, all_creds)
    routed = {c.model.key for c in d.candidates}
    assert not routed & {"openai/o1-preview", "openai/o1-mini", "openai/o3-mini", "gemini/gemini-1.5-flash"}
    reasons = {r.model.key: r.reason for r in d.rejected}
    assert reasons["openai/o1-preview"] == "retired 2025-07-28"


def test_o1_mini_with_a_system_message_is_eligible_and_adapted(catalog, all_creds):
    task = TaskLine(
        id="o",
        task="chat",
        model="openai/o1-mini",
        messages=[{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}],
    )
    d = decide(task, catalog, all_creds)
    (c,) = d.candidates
    assert c.model.key == "openai/o1-mini"
    assert "system merged into user" in c.reason
    # reasoning model: the completion cap carries the reasoning budget, and the estimate its expected reasoning
    assert c.completion_cap == 1024 + 4096
    assert c.output_tokens_est == 512 + 768


def test_model_without_system_role_or_quirk_is_rejected():
    provider = ProviderInfo(name="p", api="openai", base_url="http://x", key_env=None)
    bare = ModelInfo(
        provider="p",
        model="bare",
        api="openai",
        tier=Tier.mini,
        input_per_mtok="1",
        output_per_mtok="1",
        context_window=10_000,
        max_output_tokens=2_000,
        capabilities=[],
    )
    cat = Catalog([bare], [provider])
    task = TaskLine(id="s", task="summarize", input="some text")  # summarize sends a system message
    d = route(task, build_request(task), cat, credentials={"p"}, now=NOW)
    assert not d.candidates
    assert d.rejected[0].rule == "system_role"
    assert d.rejection_summary() == "no eligible model: system_role (1)"


def test_extract_needs_json_schema_or_a_prompt_only_quirk(catalog, all_creds):
    task = TaskLine(
        id="x", task="extract", input="Ada, 36", schema={"type": "object", "properties": {"name": {"type": "string"}}}
    )
    d = decide(task, catalog, all_creds)
    assert all(c.model.has("json_schema") or c.model.quirks.get("no_response_format") for c in d.candidates)
    assert {r.reason for r in d.rejected if r.model.key == "groq/llama-3.1-8b-instant"} == {"no JSON schema output"}
    pinned = TaskLine(id="x", task="extract", input="Ada", schema={"type": "object"}, model="o1-mini")
    (c,) = decide(pinned, catalog, all_creds).candidates
    assert "schema in prompt only" in c.reason


def test_allow_list_takes_bare_ids_and_provider_keys(catalog, all_creds):
    task = TaskLine(id="a", task="chat", input="hi", models=["gpt-4o", "anthropic/claude-sonnet-4-20250514", "nope"])
    d = decide(task, catalog, all_creds)
    assert set(keys(d)) == {"openai/gpt-4o", "anthropic/claude-sonnet-4-20250514"}
    assert any("'nope'" in w for w in d.warnings)
    assert {r.reason for r in d.rejected if r.model.key == "openai/gpt-4o-mini"} == {"not in allow-list"}


def test_deny_list(catalog, all_creds):
    task = TaskLine(id="d", task="classify", input="x", labels=["a", "b"])
    d = decide(task, catalog, all_creds, deny=frozenset({"llama-3.1-8b-instant"}))
    assert "groq/llama-3.1-8b-instant" not in keys(d)
    assert {r.reason for r in d.rejected if r.model.key == "groq/llama-3.1-8b-instant"} == {"denied"}


def test_max_cost_per_task(catalog, all_creds):
    task = TaskLine(id="m", task="summarize", input="word " * 20_000, models=["gpt-4o", "gpt-4o-mini"])
    d = decide(task, catalog, all_creds, max_cost_per_task_picos=10_000 * 10**6)
    assert keys(d) == ["openai/gpt-4o-mini"]
    (r,) = [r for r in d.rejected if r.model.key == "openai/gpt-4o"]
    assert r.rule == "max_cost" and r.reason.endswith("> max cost per task $0.01")
    assert r.estimated_picos > 10_000 * 10**6


def test_cooldown_sets_a_model_aside_and_comes_back_when_nothing_else_is_left(catalog, all_creds):
    task = TaskLine(id="c", task="classify", input="x", labels=["a", "b"])
    health = Health(cooldown_until={"groq/llama-3.1-8b-instant": NOW + 12})
    d = decide(task, catalog, all_creds, health=health)
    assert d.candidates[0].model.key != "groq/llama-3.1-8b-instant"
    assert {r.reason for r in d.rejected if r.model.key == "groq/llama-3.1-8b-instant"} == {"cooling down 12 s"}
    # a provider-wide cooldown counts for all of its models
    d = decide(task, catalog, all_creds, health=Health(cooldown_until={"groq": NOW + 5}))
    assert not [c for c in d.candidates if c.model.provider == "groq"]
    # expired cooldowns are ignored
    d = decide(task, catalog, all_creds, health=Health(cooldown_until={"groq/llama-3.1-8b-instant": NOW - 1}))
    assert d.candidates[0].model.key == "groq/llama-3.1-8b-instant"
    # only cooling models left: they are candidates again, with a warning, rather than skipping the task
    pinned = TaskLine(id="c", task="classify", input="x", labels=["a", "b"], model="groq/llama-3.1-8b-instant")
    d = decide(pinned, catalog, all_creds, health=health)
    assert keys(d) == ["groq/llama-3.1-8b-instant"]
    assert any("cooling down" in w for w in d.warnings)


def test_equal_costs_are_ordered_by_latency_then_key():
    provider = ProviderInfo(name="p", api="openai", base_url="http://x", key_env=None)
    mk = lambda name: ModelInfo(
        provider="p",
        model=name,
        api="openai",
        tier=Tier.mini,
        input_per_mtok="1",
        output_per_mtok="2",
        context_window=10_000,
        max_output_tokens=2_000,
        capabilities=["system_role"],
    )
    cat = Catalog([mk("a"), mk("b"), mk("c")], [provider])
    task = TaskLine(id="t", task="chat", input="hi")
    req = build_request(task)
    d = route(task, req, cat, credentials={"p"}, now=NOW)
    assert keys(d) == ["p/a", "p/b", "p/c"]
    d = route(task, req, cat, credentials={"p"}, now=NOW, health=Health(latency_ms={"p/c": 100, "p/b": 300}))
    assert keys(d) == ["p/c", "p/b", "p/a"]


def test_context_check_counts_the_completion_cap():
    provider = ProviderInfo(name="p", api="openai", base_url="http://x", key_env=None)
    m = ModelInfo(
        provider="p",
        model="small",
        api="openai",
        tier=Tier.mini,
        input_per_mtok="1",
        output_per_mtok="1",
        context_window=1_000,
        max_output_tokens=1_000,
        capabilities=["system_role"],
    )
    cat = Catalog([m], [provider])
    fits = ChatRequest(messages=[{"role": "user", "content": "x" * 100}], max_output_tokens=900)
    task = TaskLine(id="t", task="chat", input="x" * 100)
    assert route(task, fits, cat, credentials={"p"}, now=NOW).candidates
    too_long = fits.model_copy(update={"max_output_tokens": 990})
    d = route(task, too_long, cat, credentials={"p"}, now=NOW)
    assert not d.candidates and d.rejected[0].reason.startswith("context 1,000 < ")


def test_long_context_tier_prices_estimate_and_bound(catalog, all_creds):
    """A 300k-token prompt to gemini-2.5-pro is estimated and reserved at its above-200k rates."""
    m = catalog.get("gemini/gemini-2.5-pro")
    small = TaskLine(id="g", task="chat", input="word " * 20_000, model="gemini/gemini-2.5-pro")
    (c,) = decide(small, catalog, all_creds).candidates
    assert c.estimated_picos == (Fraction(c.input_tokens_est) * Fraction("1.25") + c.output_tokens_est * 10) * 10**6
    big = TaskLine(id="g", task="chat", input="word " * 300_000, model="gemini/gemini-2.5-pro")
    (c,) = decide(big, catalog, all_creds).candidates
    assert c.input_tokens_est > 200_000
    assert c.estimated_picos == (Fraction(c.input_tokens_est) * Fraction("2.5") + c.output_tokens_est * 15) * 10**6
    assert c.upper_bound_picos == (Fraction(c.input_tokens_upper) * Fraction("2.5") + c.completion_cap * 15) * 10**6
    assert m.price_tiers[0].above_input_tokens == 200_000


def test_a_model_past_its_shutdown_date_is_retired_whatever_its_status(catalog, all_creds):
    cat = catalog.with_overrides(models={"groq/llama-3.1-8b-instant": {"deprecation_date": "2026-01-01"}})
    task = TaskLine(id="p", task="chat", input="hi")
    d = decide(task, cat, all_creds)
    assert "groq/llama-3.1-8b-instant" not in keys(d)
    assert {r.reason for r in d.rejected if r.model.key == "groq/llama-3.1-8b-instant"} == {
        "retired: shutdown date 2026-01-01 has passed"
    }
    earlier = route(task, build_request(task), cat, credentials=all_creds, now=1_700_000_000.0)  # 2023
    assert "groq/llama-3.1-8b-instant" in keys(earlier)


def test_shipped_gpt4o_family_is_retired_and_routed_only_when_pinned(all_creds):
    cat = builtin_catalog()
    d = decide(TaskLine(id="p", task="chat", input="hi", models=["gpt-4o", "gpt-4o-mini"]), cat, all_creds)
    assert not d.candidates
    pinned = decide(TaskLine(id="p", task="chat", input="hi", model="gpt-4o-mini"), cat, all_creds)
    assert keys(pinned) == ["openai/gpt-4o-mini"] and any("retired" in w for w in pinned.warnings)


def test_candidate_costs_match_the_documented_formula(catalog, all_creds):
    task = TaskLine(id="e", task="summarize", input="word " * 1000, model="gpt-4o")
    req = build_request(task)
    (c,) = route(task, req, catalog, credentials=all_creds, now=NOW).candidates
    m = c.model
    exact = (Decimal(c.input_tokens_est) * m.input_per_mtok + Decimal(c.output_tokens_est) * m.output_per_mtok) * 10**6
    assert c.estimated_picos == exact  # exact pico-dollars: no rounding
    assert c.input_tokens_upper == upper_bound_input_tokens(req.messages)
    assert c.completion_cap == req.max_output_tokens == 300
    assert c.upper_bound_picos >= c.estimated_picos


def test_requested_output_beyond_the_model_maximum_is_rejected(catalog, all_creds):
    task = TaskLine(id="o", task="chat", input="write a book", max_output_tokens=20_000)
    d = decide(task, catalog, all_creds)
    assert all(c.model.max_output_tokens >= 20_000 for c in d.candidates)
    assert {r.reason for r in d.rejected if r.model.key == "groq/llama-3.1-8b-instant"} == {
        "max output 8,192 < 20,000 requested"
    }


def test_escalation_order_only_climbs(catalog, all_creds):
    task = TaskLine(id="x", task="extract", input="Ada, 36", schema={"type": "object"})
    d = decide(task, catalog, all_creds)
    first = d.candidates[0]
    assert first.model.tier is Tier.mini
    up = escalation_order(d, first.model)
    assert up and all(c.model.tier.rank > Tier.mini.rank for c in up)
    assert [c.estimated_picos for c in up] == sorted(c.estimated_picos for c in up)
    assert escalation_order(d, catalog.get("gpt-4o")) == []


def test_unknown_pin_leaves_no_candidates_and_says_why(catalog, all_creds):
    d = decide(TaskLine(id="u", task="chat", input="hi", model="gpt-99"), catalog, all_creds)
    assert not d.candidates
    assert any("'gpt-99' is not in the catalog" in w for w in d.warnings)


def test_available_credentials_reads_key_env_and_allows_keyless(catalog):
    cat = catalog.with_overrides(providers={"local": {"api": "openai", "base_url": "http://127.0.0.1:11434/v1"}})
    env = {"GROQ_API_KEY": "k", "OPENAI_API_KEY": "", "GEMINI_API_KEY": "  "}
    assert available_credentials(cat, simulate=False, env=env) == {"groq", "local"}


def test_route_is_pure(catalog, all_creds):
    task = TaskLine(id="p", task="chat", input="hi")
    assert decide(task, catalog, all_creds) == decide(task, catalog, all_creds)
