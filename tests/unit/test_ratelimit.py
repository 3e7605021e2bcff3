"""In-process limiter on a virtual clock: a real asyncio loop whose time jumps to the next timer
whenever every task is asleep, so minutes of pacing with hundreds of waiters run in milliseconds
and every grant time is exact."""

from __future__ import annotations

import asyncio
import random
import selectors
from bisect import bisect_left

import pytest

from llmbatch.config import RateLimit, Settings
from llmbatch.errors import ConfigError
from llmbatch.ratelimit import (
    InProcessRateLimiter,
    Pacing,
    RateLimiter,
    RedisRateLimiter,
    make_rate_limiter,
)

EPOCH = 1_700_000_000.0  # wall clock = EPOCH + virtual loop time


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, loop: "VirtualTimeLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is scheduled")
        self._loop.now += max(0.0, timeout)  # instead of blocking, jump to the next timer
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(make_coro):
    """make_coro(limiter_factory) -> coroutine; the factory builds limiters on this loop's clock."""
    loop = VirtualTimeLoop()

    def factory(limits, **kw) -> InProcessRateLimiter:
        return InProcessRateLimiter(limits, clock=loop.time, wall_clock=lambda: EPOCH + loop.time(), **kw)

    try:
        return loop.run_until_complete(make_coro(factory, loop))
    finally:
        loop.close()


async def hammer(limiter: RateLimiter, key: str, loop, *, workers: int, until: float, tokens=lambda: 0):
    """`workers` coroutines acquire back to back until virtual time `until`; returns (time, tokens) grants."""
    grants: list[tuple[float, int]] = []

    async def worker():
        while loop.time() < until:
            n = tokens()
            await limiter.acquire(key, n)
            if loop.time() < until:
                grants.append((loop.time(), n))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return grants


def max_in_window(grants: list[tuple[float, int]], span: float) -> int:
    """Most units granted within any half-open span [t, t + span)."""
    times = [t for t, _ in grants]
    prefix = [0]
    for _, n in grants:
        prefix.append(prefix[-1] + n)
    return max(prefix[bisect_left(times, t + span)] - prefix[i] for i, t in enumerate(times))


def as_requests(grants):
    return [(t, 1) for t, _ in grants]


# --- pacing arithmetic -------------------------------------------------------------------------


def test_burst_is_one_second_and_rate_leaves_room_for_it():
    p = Pacing.per_minute(600)
    assert p.burst == 10
    # 591 units per 60.5 s: any 60.5 s span holds at most 600.
    assert p.interval == pytest.approx(60.5 / 591)
    assert 0.97 * 600 < p.sustained_per_minute < 600
    assert Pacing.per_minute(1).burst == 1 and Pacing.per_minute(1).interval == pytest.approx(60.5)


def test_token_burst_fits_a_large_call_but_never_more_than_a_tenth_of_the_minute():
    assert Pacing.per_minute(2_000_000, min_burst=8192).burst == 33_334  # one second of TPM
    assert Pacing.per_minute(200_000, min_burst=8192).burst == 8192
    assert Pacing.per_minute(30_000, min_burst=8192).burst == 3000


def test_invalid_limits_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r'rate_limits."openai/gpt-4o".rpm'):
        InProcessRateLimiter({"openai/gpt-4o": RateLimit(rpm=0)})
    with pytest.raises(ConfigError, match="tpm"):
        InProcessRateLimiter({"a/b": RateLimit(tpm=-5)})


# --- pacing under load -------------------------------------------------------------------------


@pytest.mark.parametrize("rpm", [1, 7, 60, 600, 5000])
def test_rpm_never_exceeds_any_sliding_minute_and_runs_near_the_limit(rpm):
    async def main(make, loop):
        lim = make({"p/m": RateLimit(rpm=rpm)})
        return await hammer(lim, "p/m", loop, workers=200, until=240.0)

    grants = run_virtual(main)
    assert max_in_window(as_requests(grants), 60.0) <= rpm
    # The latency allowance: even a span just under 60.5 s stays within the limit (the bound is
    # exact at 60.5 s, where float rounding of summed intervals could land either side).
    assert max_in_window(as_requests(grants), 60.5 - 1e-6) <= rpm
    if rpm >= 7:
        # Steady state (after the first minute) runs within a few percent of the limit.
        steady = sum(1 for t, _ in grants if 60.0 <= t < 240.0)
        assert steady >= 0.96 * rpm * 3


def test_rpm_is_spread_evenly_not_front_loaded():
    async def main(make, loop):
        return await hammer(make({"p/m": RateLimit(rpm=600)}), "p/m", loop, workers=300, until=30.0)

    grants = run_virtual(main)
    at_zero = sum(1 for t, _ in grants if t == 0.0)
    assert at_zero == 10  # the burst, not the minute
    # After the burst, ~9.8/s: every 1 s span holds about that many.
    assert max_in_window(as_requests(grants[10:]), 1.0) <= 10


def test_tpm_paces_tokens_of_varied_sizes():
    rng = random.Random(7)

    async def main(make, loop):
        lim = make({"p/m": RateLimit(tpm=60_000)})
        return await hammer(lim, "p/m", loop, workers=100, until=300.0, tokens=lambda: rng.randint(50, 4000))

    grants = run_virtual(main)
    assert max_in_window(grants, 60.5 - 1e-6) <= 60_000
    steady = sum(n for t, n in grants if 60.0 <= t < 300.0)
    # The token burst here is 10% of the TPM (6000), which the window bound gives up: ~89%.
    assert steady >= 0.87 * 60_000 * 4


def test_rpm_and_tpm_together_each_bind():
    async def main(make, loop):
        lim = make(
            {"rpm-bound/m": RateLimit(rpm=120, tpm=1_000_000), "tpm-bound/m": RateLimit(rpm=100_000, tpm=12_000)}
        )
        a = asyncio.create_task(hammer(lim, "rpm-bound/m", loop, workers=50, until=180.0, tokens=lambda: 100))
        b = asyncio.create_task(hammer(lim, "tpm-bound/m", loop, workers=50, until=180.0, tokens=lambda: 100))
        return await a, await b

    rpm_bound, tpm_bound = run_virtual(main)
    assert max_in_window(as_requests(rpm_bound), 60.0) <= 120
    assert sum(1 for t, _ in rpm_bound if t >= 60) >= 0.96 * 240
    assert max_in_window(tpm_bound, 60.0) <= 12_000
    assert max_in_window(as_requests(tpm_bound), 60.0) <= 120  # 12k TPM / 100 tokens
    assert sum(n for t, n in tpm_bound if t >= 60) >= 0.87 * 24_000  # token burst is 10% of 12k


def test_a_denied_attempt_consumes_neither_dimension():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(rpm=2, tpm=600)})
        await lim.acquire("p/m", 600)  # idle bucket: allowed, and the minute's tokens are gone
        with pytest.raises(asyncio.TimeoutError):
            await lim.acquire("p/m", 10, deadline=EPOCH + loop.time() + 1)  # tokens do not fit
        # The request slot the denied attempt looked at is still free: it comes at 60.5/2 s, not later.
        await lim.acquire("p/m", 0)
        return loop.time()

    assert run_virtual(main) == pytest.approx(60.5 / 2)


def test_request_larger_than_burst_waits_for_idle_bucket_instead_of_starving():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(tpm=6000)})
        await lim.acquire("p/m", 100)
        await lim.acquire("p/m", 3000)  # more than the burst: must wait, but does get through
        return loop.time()

    t = run_virtual(main)
    p = Pacing.per_minute(6000, min_burst=8192)
    assert p.burst == 600  # 10% of the TPM
    assert t == pytest.approx(100 * p.interval + (3000 - p.burst) * p.interval)


def test_waiters_are_served_fifo_and_do_not_poll():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(rpm=60)})
        calls = 0
        inner = lim._try_acquire

        async def counting(*a):
            nonlocal calls
            calls += 1
            return await inner(*a)

        lim._try_acquire = counting
        order: list[int] = []

        async def one(i):
            await lim.acquire("p/m", 0)
            order.append(i)

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        await asyncio.gather(*tasks)
        return order, calls

    order, calls = run_virtual(main)
    assert order == list(range(200))
    assert calls <= 2 * 200  # one check per grant plus one per wake-up, not one per waiter per slot


def test_refund_returns_unused_tokens():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(tpm=600)})
        await lim.acquire("p/m", 600)
        await lim.refund("p/m", 590)  # the call used 10 tokens, not 600
        await lim.acquire("p/m", 10)
        return loop.time()

    # Without the refund the second call would wait about a minute.
    assert run_virtual(main) < 2.0


# --- cooldown ----------------------------------------------------------------------------------


def test_cooldown_blocks_then_releases_and_keeps_the_later_end():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(rpm=6000)})
        await lim.cooldown("p/m", 10.0)
        await lim.cooldown("p/m", 3.0)  # shorter: the existing 10 s wins
        assert await lim.cooldown_remaining("p/m") == pytest.approx(10.0)
        assert await lim.cooldown_remaining("other/m") == 0.0
        grants = await asyncio.gather(*(lim.acquire("p/m", 0) for _ in range(50)))
        assert len(grants) == 50
        t_first = loop.time()
        assert await lim.cooldown_remaining("p/m") == 0.0
        return t_first

    # All 50 waited for the cooldown; 6000 RPM lets them out in well under a second after it.
    assert 10.0 <= run_virtual(main) < 10.5


def test_cooldown_holds_unlimited_keys_too():
    async def main(make, loop):
        lim = make({})
        await lim.cooldown("free/m", 2.0)
        await lim.acquire("free/m", 1000)
        return loop.time()

    assert run_virtual(main) == pytest.approx(2.0)


# --- fast path and deadlines -------------------------------------------------------------------


def test_unlimited_keys_never_wait():
    async def main(make, loop):
        lim = make({"limited/m": RateLimit(rpm=1), "empty/m": RateLimit()})
        await asyncio.gather(*(lim.acquire(k, 10**6) for k in ("free/m", "empty/m") for _ in range(5000)))
        return loop.time()

    assert run_virtual(main) == 0.0


def test_deadline_raises_as_soon_as_the_slot_is_known_to_be_late():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(rpm=60)})
        await lim.acquire("p/m", 0)
        with pytest.raises(asyncio.TimeoutError, match="p/m"):
            await lim.acquire("p/m", 0, deadline=EPOCH + loop.time() + 0.5)  # next slot ~1 s away
        raised_at = loop.time()
        await lim.acquire("p/m", 0, deadline=EPOCH + loop.time() + 5)  # fits
        with pytest.raises(asyncio.TimeoutError):
            await lim.acquire("p/m", 0, deadline=EPOCH + loop.time() - 1)
        return raised_at

    assert run_virtual(main) == 0.0  # did not sleep until the deadline first


def test_deadline_applies_while_queued_behind_other_waiters():
    async def main(make, loop):
        lim = make({"p/m": RateLimit(rpm=60)})
        head = [asyncio.create_task(lim.acquire("p/m", 0)) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(asyncio.TimeoutError):
            await lim.acquire("p/m", 0, deadline=EPOCH + loop.time() + 2.5)
        timed_out_at = loop.time()
        await asyncio.gather(*head)
        return timed_out_at

    assert run_virtual(main) <= 2.5


# --- factory -----------------------------------------------------------------------------------


def test_make_rate_limiter_picks_the_backend():
    limits = {"p/m": RateLimit(rpm=10)}
    assert isinstance(make_rate_limiter(Settings(rate_limits=limits), shared=True), InProcessRateLimiter)
    with_redis = Settings(broker_url="redis://localhost:1/0", rate_limits=limits)
    assert isinstance(make_rate_limiter(with_redis, shared=False), InProcessRateLimiter)
    shared = make_rate_limiter(with_redis, shared=True)
    assert isinstance(shared, RedisRateLimiter)  # constructing does not connect
    asyncio.run(shared.close())
    with pytest.raises(ConfigError, match="LLMBATCH_REDIS_URL"):
        make_rate_limiter(Settings(broker_url="amqp://guest@rabbit//"), shared=True)


def test_unreachable_redis_retries_until_the_deadline_then_says_so(caplog):
    import time

    from llmbatch.ratelimit import RateLimiterUnavailable

    async def main():
        lim = RedisRateLimiter("redis://:secret-pw@127.0.0.1:1/0", {"p/m": RateLimit(rpm=10)})
        try:
            start = time.time()
            with pytest.raises(RateLimiterUnavailable) as info:
                await lim.acquire("p/m", 0, deadline=time.time() + 1.5)
            return time.time() - start, str(info.value)
        finally:
            await lim.close()

    with caplog.at_level("WARNING", logger="llmbatch.ratelimit.redis"):
        elapsed, message = asyncio.run(main())
    assert caplog.records and all("secret-pw" not in r.getMessage() for r in caplog.records)
    assert 0.3 < elapsed <= 1.6  # kept retrying, then gave up at the deadline
    assert "127.0.0.1:1" in message and "secret-pw" not in message
    assert issubclass(RateLimiterUnavailable, TimeoutError)
