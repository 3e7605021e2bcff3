"""A circuit breaker per provider: stop calling a provider that keeps failing, for a while.

Without it, a provider-wide outage (a burst of 5xx, an endpoint that refuses connections) is met by every
task on its own: each burns its retries on one model, falls back to the next model of the same provider at
once, and fails with the 5xx when its attempt budget is gone, so a one-minute outage fails a whole wave of
tasks. With it, `threshold` consecutive server-side failures of one provider (across all tasks of this
process) open the breaker: the provider is marked cooling in `Health`, so routing sends new tasks to other
providers' models when there are any, and the engine makes a task whose candidate is on that provider
wait out the hold instead of spending attempts. Calls already in flight when it opens do not extend it.
When the hold ends, calls go through again (half-open); the first failure re-opens it with twice the hold,
up to `max_hold_s`; any success closes it.

Pure bookkeeping with the clock passed in; one instance per Engine (per process). Workers learn on their
own: a breaker costs each process `threshold` failed calls, and nothing is shared through Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .routing import Health


@dataclass
class _State:
    failures: int = 0  # consecutive server-side failures since the last success
    opens: int = 0  # times opened since the last success (the hold doubles each time)
    open_until: float = 0.0


@dataclass
class ProviderBreaker:
    health: Health
    threshold: int = 5  # consecutive failures that open it; 0 disables the breaker
    base_hold_s: float = 2.0
    max_hold_s: float = 30.0
    _states: dict[str, _State] = field(default_factory=dict)

    def failure(self, provider: str, now: float) -> float | None:
        """Count a server-side failure. Returns the hold in seconds when this failure opened the breaker."""
        if self.threshold <= 0:
            return None
        st = self._states.setdefault(provider, _State())
        st.failures += 1
        if now < st.open_until or st.failures < self.threshold:
            return None  # already open (a call that was in flight), or not enough failures yet
        st.opens += 1
        hold = min(self.max_hold_s, self.base_hold_s * 2 ** (st.opens - 1))
        st.open_until = now + hold
        until = self.health.cooldown_until.get(provider, 0.0)
        self.health.cooldown_until[provider] = max(until, st.open_until)
        return hold

    def success(self, provider: str) -> None:
        """A call the provider answered: close the breaker and forget the failures."""
        st = self._states.get(provider)
        if st is not None and (st.failures or st.opens):
            st.failures = st.opens = 0
            # A cooldown set by the breaker ends now; one set by a 429 elsewhere is a model key, not this.
            if self.health.cooldown_until.get(provider, 0.0) == st.open_until:
                self.health.cooldown_until.pop(provider, None)
            st.open_until = 0.0
