"""channels.py: durations, which channel a task takes, and the estimate per channel (pure logic)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llmbatch import channels
from llmbatch.catalog import builtin_catalog
from llmbatch.channel_report import ChannelEstimate
from llmbatch.models import JobSpec

CAT = builtin_catalog()
MINI = CAT.get("openai/gpt-4o-mini")
GROQ = CAT.get("groq/llama-3.1-8b-instant")
FLEXY = MINI.model_copy(update={"quirks": {"flex": True}})
DAY = 86400.0


def timing(span=None, elapsed=0.0, turnaround=DAY, fallback=None):
    fb = channels.fallback_s(span, None) if span and fallback is None else (fallback or 0.0)
    return channels.Timing(span, None if span is None else span - elapsed, turnaround, 900.0, fb)


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("30m", 1800), ("24h", DAY), ("2d", 2 * DAY), ("45", 45), (" 1.5h ", 5400), (600, 600)],
)
def test_durations(text, seconds):
    assert channels.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "0s", "-5m", "10 weeks", "h"])
def test_bad_durations_name_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="90s"):
        channels.parse_duration(bad)


def test_job_spec_rejects_a_bad_deadline_and_channel():
    assert JobSpec(channel="batch", deadline="24h").deadline == "24h"
    with pytest.raises(ValueError):
        JobSpec(deadline="tomorrow")
    with pytest.raises(ValueError):
        JobSpec(channel="carrier-pigeon")


def test_no_deadline_means_online():
    assert channels.choose("auto", MINI, timing()) == channels.ONLINE


def test_auto_takes_batch_when_the_window_fits_the_deadline():
    assert channels.choose("auto", MINI, timing(span=DAY, elapsed=5)) == channels.BATCH
    assert channels.choose("auto", MINI, timing(span=3600)) == channels.ONLINE  # assumed 24 h does not fit 1 h
    # measured turnaround (20 min) fits a 1 h deadline
    assert channels.choose("auto", MINI, timing(span=3600, turnaround=1200)) == channels.BATCH
    # past the fallback point nothing new goes to a batch
    assert channels.choose("auto", MINI, timing(span=3600, elapsed=3000, turnaround=1200)) == channels.ONLINE


def test_auto_flex_when_batch_does_not_fit_and_batch_first_at_equal_price():
    assert channels.choose("auto", FLEXY, timing(span=3600)) == channels.FLEX
    assert channels.choose("auto", FLEXY, timing(span=DAY)) == channels.BATCH


def test_explicit_channels_and_models_without_them():
    assert channels.choose("batch", MINI, timing()) == channels.BATCH
    assert channels.choose("batch", GROQ, timing()) == channels.ONLINE  # no batch API
    assert channels.choose("flex", MINI, timing()) == channels.ONLINE  # catalog does not offer flex
    assert channels.choose("flex", FLEXY, timing()) == channels.FLEX
    assert channels.choose("online", FLEXY, timing(span=DAY)) == channels.ONLINE


def test_legacy_sync_rows_are_online_and_discounts():
    assert channels.canonical("sync") == channels.ONLINE and channels.canonical("batch") == channels.BATCH
    assert channels.discount(MINI, channels.BATCH) == Decimal("0.5")
    assert channels.discount(GROQ, channels.BATCH) == 1 and channels.discount(MINI, channels.ONLINE) == 1


def test_fallback_is_a_quarter_of_the_deadline_at_most_an_hour():
    assert channels.fallback_s(60, None) == 15 and channels.fallback_s(DAY, None) == 3600
    assert channels.fallback_s(DAY, 120.0) == 120


def test_estimate_per_channel_takes_the_cheapest_model_offering_it():
    from types import SimpleNamespace as C

    est = ChannelEstimate()
    micro = 10**6  # picos per micro-dollar
    est.add([C(model=GROQ, estimated_picos=30 * micro), C(model=MINI, estimated_picos=50 * micro)])
    est.add([C(model=GROQ, estimated_picos=100 * micro)])
    rows = {r["channel"]: r for r in est.rows()}
    assert rows["online"]["estimated_usd"] == Decimal("0.00013") and rows["online"]["tasks"] == 2
    assert rows["batch"]["estimated_usd"] == Decimal("0.000125") and rows["batch"]["tasks"] == 1
    assert rows["flex"]["estimated_usd"] == Decimal("0.00013") and rows["flex"]["tasks"] == 0
