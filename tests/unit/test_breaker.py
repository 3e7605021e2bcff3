"""The per-provider circuit breaker: opens after N consecutive server-side failures, is not extended by calls
that were already in flight, doubles its hold on each re-open, closes on any success."""

from llmbatch.breaker import ProviderBreaker
from llmbatch.routing import Health


def test_opens_after_threshold_and_marks_the_provider_cooling():
    h = Health()
    b = ProviderBreaker(h, threshold=3, base_hold_s=2.0, max_hold_s=30.0)
    assert b.failure("openai", 100.0) is None
    assert b.failure("openai", 100.1) is None
    assert h.cooling("openai", 100.1) is None
    assert b.failure("openai", 100.2) == 2.0
    assert h.cooling("openai", 100.2) == 2.0
    assert h.cooling("anthropic", 100.2) is None  # per provider


def test_failures_while_open_do_not_extend_it():
    h = Health()
    b = ProviderBreaker(h, threshold=2, base_hold_s=2.0, max_hold_s=30.0)
    b.failure("p", 0.0)
    assert b.failure("p", 0.0) == 2.0
    for t in (0.1, 0.5, 1.9):  # the other calls that were in flight when it opened
        assert b.failure("p", t) is None
    assert h.cooldown_until["p"] == 2.0


def test_reopens_with_a_doubled_hold_up_to_the_cap_and_closes_on_success():
    h = Health()
    b = ProviderBreaker(h, threshold=2, base_hold_s=2.0, max_hold_s=5.0)
    b.failure("p", 0.0)
    assert b.failure("p", 0.0) == 2.0
    assert b.failure("p", 2.5) == 4.0  # half-open: the first failure after the hold re-opens it, doubled
    assert b.failure("p", 7.0) == 5.0  # capped
    b.success("p")
    assert "p" not in h.cooldown_until
    assert b.failure("p", 20.0) is None  # counting starts again
    assert b.failure("p", 20.1) == 2.0


def test_success_keeps_a_longer_cooldown_it_did_not_set_and_zero_disables():
    h = Health()
    b = ProviderBreaker(h, threshold=1, base_hold_s=2.0, max_hold_s=30.0)
    assert b.failure("p", 0.0) == 2.0
    h.cooldown_until["p"] = 50.0  # set by someone else, later
    b.success("p")
    assert h.cooldown_until["p"] == 50.0
    off = ProviderBreaker(Health(), threshold=0)
    assert all(off.failure("p", float(t)) is None for t in range(100))
