"""catalog.pricing against an independent computation of the documented formula, in exact fractions.

DESIGN.md, "Result lines": (input - cached - cache_write) x input_price + cached x cached_price
+ cache_write x cache_write_price + output x output_price, times the batch discount on the batch channel.
Money is exact integer pico-dollars: USD per 1M tokens x tokens = micro-dollars = 10**6 picos, never rounded.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmbatch.catalog import ModelInfo, builtin_catalog
from llmbatch.catalog.pricing import price, upper_bound_picos
from llmbatch.errors import PricingError
from llmbatch.models import Tier, Usage

prices = st.decimals(min_value=0, max_value=200, places=5, allow_nan=False, allow_infinity=False)


@st.composite
def models(draw) -> ModelInfo:
    return ModelInfo(
        provider="p",
        model="m",
        api="openai",
        tier=Tier.mini,
        input_per_mtok=draw(prices),
        output_per_mtok=draw(prices),
        cached_input_per_mtok=draw(st.none() | prices),
        cache_write_per_mtok=draw(st.none() | prices),
        batch_discount=draw(st.none() | st.sampled_from(["0.5", "1"])),
        context_window=1_000_000,
        max_output_tokens=100_000,
    )


@st.composite
def usages(draw) -> Usage:
    inp = draw(st.integers(0, 2_000_000))
    cached = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - cached))
    out = draw(st.integers(0, 200_000))
    return Usage(
        input_tokens=inp,
        cached_tokens=cached,
        cache_write_tokens=write,
        output_tokens=out,
        reasoning_tokens=draw(st.integers(0, out)),
    )


PICOS_PER_MICRO = 10**6


def F(d) -> Fraction:
    return Fraction(d)  # Decimal -> Fraction is exact


def expected_picos(u: Usage, m: ModelInfo, *, batch: bool) -> Fraction:
    p_in = F(m.input_per_mtok)
    p_cached = F(m.cached_input_per_mtok) if m.cached_input_per_mtok is not None else p_in
    p_write = F(m.cache_write_per_mtok) if m.cache_write_per_mtok is not None else p_in
    total = (
        (u.input_tokens - u.cached_tokens - u.cache_write_tokens) * p_in
        + u.cached_tokens * p_cached
        + u.cache_write_tokens * p_write
        + u.output_tokens * F(m.output_per_mtok)
    )
    # USD per 1M tokens x tokens = micro-dollars = 10**6 pico-dollars
    return total * (F(m.batch_discount) if batch else 1) * PICOS_PER_MICRO


@given(models(), usages(), st.booleans())
def test_price_matches_the_documented_formula(m, u, batch):
    if batch and m.batch_discount is None:
        with pytest.raises(PricingError, match="no batch channel"):
            price(u, m, batch=True)
        return
    cost = price(u, m, batch=batch)
    exact = expected_picos(u, m, batch=batch)
    assert cost.picos == exact  # exact: an integer, never rounded
    assert F(cost.uncached_input_picos + cost.cached_input_picos + cost.cache_write_picos + cost.output_picos) == exact


@given(models(), usages())
def test_reasoning_tokens_are_billed_inside_output_not_on_top(m, u):
    assert price(u, m).picos == price(u.model_copy(update={"reasoning_tokens": 0}), m).picos


@given(models(), usages(), st.integers(0, 50_000), st.integers(0, 50_000))
def test_upper_bound_covers_any_usage_within_the_limits(m, u, extra_in, extra_out):
    # The budget reservation: whatever the provider reports within the reserved input and completion cap,
    # the settled cost cannot exceed it. (Real catalogs price cached input at or below input.)
    if m.cached_input_per_mtok is not None and m.cached_input_per_mtok > m.input_per_mtok:
        m = m.model_copy(update={"cached_input_per_mtok": m.input_per_mtok})
    bound = upper_bound_picos(m, u.input_tokens + extra_in, u.output_tokens + extra_out)
    assert price(u, m).picos <= bound


def test_upper_bound_covers_a_cached_price_above_the_input_price():
    m = ModelInfo(
        provider="p",
        model="m",
        api="openai",
        tier=Tier.mini,
        input_per_mtok="1",
        cached_input_per_mtok="2",
        output_per_mtok="1",
        context_window=1000,
        max_output_tokens=100,
    )
    assert price(Usage(input_tokens=100, cached_tokens=100), m).picos <= upper_bound_picos(m, 100, 0)


@given(
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.integers(0, 50_000),
    st.integers(0, 5_000),
)
def test_anthropic_usage_convention(input_tokens, cache_read, cache_creation, output_tokens, thinking):
    """Anthropic's `input_tokens` excludes cache reads and writes; mapped onto ours, the bill is Anthropic's:
    input x base + cache_read x read price + cache_creation x write price + output x output price."""
    m = builtin_catalog().get("claude-sonnet-4-20250514")
    ours = Usage(
        input_tokens=input_tokens + cache_read + cache_creation,
        cached_tokens=cache_read,
        cache_write_tokens=cache_creation,
        output_tokens=output_tokens + thinking,
        reasoning_tokens=thinking,
    )
    anthropic_bill = (
        input_tokens * F(m.input_per_mtok)
        + cache_read * F(m.cached_input_per_mtok)
        + cache_creation * F(m.cache_write_per_mtok)
        + (output_tokens + thinking) * F(m.output_per_mtok)
    )
    assert price(ours, m).picos == anthropic_bill * PICOS_PER_MICRO
    # REFERENCE.md: a 5-minute cache write costs 1.25x input, a read 0.1x
    assert F(m.cache_write_per_mtok) == F(m.input_per_mtok) * Fraction(5, 4)
    assert F(m.cached_input_per_mtok) == F(m.input_per_mtok) / 10


@given(st.integers(0, 100_000), st.integers(0, 100_000), st.integers(0, 50_000))
def test_openai_usage_convention(prompt_tokens, cached_share, completion_tokens):
    """OpenAI's prompt_tokens include cached_tokens; completion_tokens include reasoning tokens."""
    cached = min(cached_share, prompt_tokens)
    m = builtin_catalog().get("gpt-4o")
    ours = Usage(input_tokens=prompt_tokens, cached_tokens=cached, output_tokens=completion_tokens)
    bill = (
        (prompt_tokens - cached) * F(m.input_per_mtok)
        + cached * F(m.cached_input_per_mtok)
        + completion_tokens * F(m.output_per_mtok)
    )
    assert price(ours, m).picos == bill * PICOS_PER_MICRO
    assert price(ours, m, batch=True).picos == bill / 2 * PICOS_PER_MICRO


def test_worked_example():
    # 1,000 in (200 cached), 500 out on gpt-4o-mini: 800 x 0.15 + 200 x 0.075 + 500 x 0.60 = 435 micro-dollars
    m = builtin_catalog().get("gpt-4o-mini")
    assert price(Usage(input_tokens=1000, cached_tokens=200, output_tokens=500), m).picos == 435 * 10**6


def test_cheap_calls_are_not_rounded_up():
    """The issue's cases: groq llama-3.1-8b at 0.05/0.08 and a $0.01/M model, exact to the pico-dollar
    (micro-dollar rounding charged 837 for 735.9 and 1,000 for 606)."""
    groq = builtin_catalog().get("groq/llama-3.1-8b-instant")
    assert price(Usage(input_tokens=12_345, output_tokens=1_482), groq).picos == (12_345 * 5 + 1_482 * 8) * 10**4
    cheap = ModelInfo(
        provider="p",
        model="m",
        api="openai",
        tier=Tier.mini,
        input_per_mtok="0.01",
        output_per_mtok="0.01",
        context_window=1000,
        max_output_tokens=100,
    )
    assert price(Usage(input_tokens=50_000, output_tokens=10_600), cheap).picos == 606 * 10**6


def test_a_price_finer_than_one_pico_per_token_is_refused():
    with pytest.raises(ValueError, match="finer than the ledger's unit"):
        ModelInfo(
            provider="p",
            model="m",
            api="openai",
            tier=Tier.mini,
            input_per_mtok="0.0000001",
            output_per_mtok="1",
            context_window=1000,
            max_output_tokens=100,
        )
    with pytest.raises(ValueError, match="batch_discount"):  # 0.000001 x 0.5 is half a pico per token
        ModelInfo(
            provider="p",
            model="m",
            api="openai",
            tier=Tier.mini,
            input_per_mtok="0.000001",
            output_per_mtok="1",
            batch_discount="0.5",
            context_window=1000,
            max_output_tokens=100,
        )


def test_long_context_tiers_any_number_of_thresholds():
    m = ModelInfo(
        provider="p",
        model="m",
        api="openai",
        tier=Tier.mini,
        input_per_mtok="1",
        output_per_mtok="2",
        context_window=2_000_000,
        max_output_tokens=100,
        price_tiers=[
            {"above_input_tokens": 500_000, "input_per_mtok": "3", "output_per_mtok": "6"},
            {"above_input_tokens": 100_000, "input_per_mtok": "2", "output_per_mtok": "4"},
        ],
    )
    at = lambda n: price(Usage(input_tokens=n, output_tokens=10), m).picos  # noqa: E731
    assert at(100_000) == (100_000 * 1 + 10 * 2) * 10**6  # "above": the threshold itself is the lower tier
    assert at(100_001) == (100_001 * 2 + 10 * 4) * 10**6
    assert at(600_000) == (600_000 * 3 + 10 * 6) * 10**6
    # the bound holds at the dearest tier the input could reach
    assert upper_bound_picos(m, 600_000, 10) == at(600_000)
    assert upper_bound_picos(m, 50_000, 10) == at(50_000)


def test_gemini_25_pro_300k_prompt_is_priced_at_the_long_context_rate():
    m = builtin_catalog().get("gemini-2.5-pro")
    assert price(Usage(input_tokens=300_000, output_tokens=1_000), m).picos == (300_000 * 2.5 + 1_000 * 15) * 10**6
    assert price(Usage(input_tokens=100_000, output_tokens=1_000), m).picos == (100_000 * 1.25 + 1_000 * 10) * 10**6


@pytest.mark.parametrize(
    "usage, match",
    [
        (Usage(input_tokens=10, cached_tokens=8, cache_write_tokens=5), "exceed input_tokens"),
        (Usage(output_tokens=3, reasoning_tokens=4), "reasoning_tokens"),
        (Usage(input_tokens=-1), "negative"),
    ],
)
def test_inconsistent_usage_is_refused_not_priced_at_zero(usage, match):
    with pytest.raises(PricingError, match=match):
        price(usage, builtin_catalog().get("gpt-4o"))
