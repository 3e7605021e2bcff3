"""The per-provider circuit breaker: opens after N consecutive server-side failures, is not extended by calls
that were already in flight, lets ONE probe through when the hold is over, doubles its hold on each re-open,
closes on any answer."""

import pytest

from llmbatch.breaker import PROBE_POLL_S, ProviderBreaker
from llmbatch.routing import Health


def _open(b: ProviderBreaker, provider: str, now: float) -> float:
    hold = None
    for _ in range(b.threshold):
        hold = b.failure(provider, now)
    assert hold is not None
    return hold


def test_opens_after_threshold_and_marks_the_provider_cooling():
    h = Health()
    b = ProviderBreaker(h, threshold=3, base_hold_s=2.0, max_hold_s=30.0)
    assert b.failure("openai", 100.0) is None
    assert b.failure("openai", 100.1) is None
    assert h.cooling("openai", 100.1) is None
    assert b.admit("openai", 100.1)[0] is not None  # still closed
    assert b.failure("openai", 100.2) == 2.0
    assert h.cooling("openai", 100.2) == 2.0
    ticket, wait = b.admit("openai", 100.5)
    assert ticket is None and wait == pytest.approx(1.7)
    assert h.cooling("anthropic", 100.2) is None and b.admit("anthropic", 100.5)[0] is not None  # per provider


def test_failures_while_open_do_not_extend_it():
    h = Health()
    b = ProviderBreaker(h, threshold=2, base_hold_s=2.0, max_hold_s=30.0)
    assert _open(b, "p", 0.0) == 2.0
    for t in (0.1, 0.5, 1.9):  # the other calls that were in flight when it opened
        assert b.failure("p", t) is None
    assert h.cooldown_until["p"] == 2.0


def test_half_open_lets_one_probe_through_and_an_answer_closes_it():
    h = Health()
    b = ProviderBreaker(h, threshold=2, base_hold_s=2.0, max_hold_s=30.0)
    _open(b, "p", 0.0)
    probe, wait = b.admit("p", 2.5)
    assert probe is not None and probe.probe and wait == 0
    # Everyone else keeps waiting while the probe is out: no stampede when the hold ends.
    assert all(b.admit("p", t) == (None, PROBE_POLL_S) for t in (2.6, 3.0, 9.0))
    b.success("p")
    b.release(probe)
    assert "p" not in h.cooldown_until
    t1, t2 = b.admit("p", 9.1)[0], b.admit("p", 9.1)[0]
    assert t1 is not None and t2 is not None and not t1.probe  # closed: everyone goes


def test_a_failed_probe_reopens_with_a_doubled_hold_up_to_the_cap():
    h = Health()
    b = ProviderBreaker(h, threshold=2, base_hold_s=2.0, max_hold_s=5.0)
    _open(b, "p", 0.0)
    probe, _ = b.admit("p", 2.5)
    assert b.failure("p", 2.6) == 4.0
    b.release(probe)  # after its failure: changes nothing
    ticket, wait = b.admit("p", 6.0)
    assert ticket is None and wait == pytest.approx(0.6)
    probe, _ = b.admit("p", 6.7)
    assert probe.probe and b.failure("p", 6.8) == 5.0  # capped


def test_a_probe_that_never_called_hands_over_to_the_next_task():
    b = ProviderBreaker(Health(), threshold=1, base_hold_s=1.0)
    _open(b, "p", 0.0)
    first, _ = b.admit("p", 1.5)
    assert b.admit("p", 1.6)[0] is None
    b.release(first)  # e.g. its budget reservation was refused: no call, no answer
    second, _ = b.admit("p", 1.7)
    assert second is not None and second.probe and second is not first
    b.release(first)  # a stale release (the old probe's) must not free the new probe's slot
    assert b.admit("p", 1.8)[0] is None


def test_zero_threshold_disables_it():
    off = ProviderBreaker(Health(), threshold=0)
    assert all(off.failure("p", float(t)) is None for t in range(100))
    assert off.admit("p", 100.0)[0] is not None


def test_an_answer_to_a_call_sent_before_the_failures_began_does_not_close_it():
    """At the start of an outage the fast 5xx come back before slow answers to calls sent earlier; those old
    answers must not close the breaker (each did, and every waiting task called into the outage again)."""
    h = Health()
    b = ProviderBreaker(h, threshold=2, base_hold_s=2.0, max_hold_s=30.0)
    assert _open(b, "p", 10.0) == 2.0  # the first failure seen at 10.0
    b.success("p", sent_at=9.9)  # sent before it: in flight all along
    assert b.admit("p", 10.5) == (None, pytest.approx(1.5)) and h.cooldown_until["p"] == 12.0
    probe, _ = b.admit("p", 12.1)
    b.success("p", sent_at=12.1)  # the probe's answer: sent after the failures began
    b.release(probe)
    assert b.admit("p", 12.2)[0] is not None and "p" not in h.cooldown_until
    # Closed with failures counting: an old answer does not reset the count either.
    b.failure("p", 20.0)
    b.success("p", sent_at=19.0)
    assert b.failure("p", 20.1) == 2.0
