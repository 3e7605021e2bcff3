"""A circuit breaker per provider: stop calling a provider that keeps failing, for a while.

Without it, a provider-wide outage (a burst of 5xx, an endpoint that refuses connections) is met by every
task on its own: each burns its retries on one model, falls back to the next model of the same provider at
once, and fails with the 5xx when its attempt budget is gone, so a one-minute outage fails a whole wave of
tasks. With it:
- closed: calls go through. `threshold` consecutive server-side failures of one provider (across all tasks
  of this process) open it.
- open: no calls for the hold. The provider is marked cooling in `Health`, so routing sends new tasks to
  other providers' models when there are any; tasks whose candidate is on it wait instead of spending
  attempts. Calls already in flight when it opened do not extend it.
- half-open, when the hold is over: ONE call (the probe) goes through, the others keep waiting; without
  this, every task that waited (hundreds per worker) would hit the provider in the same instant. Any
  answer from the provider closes it (a 4xx or a 429 is an answer: the provider is up); a server-side
  failure re-opens it with twice the hold, up to `max_hold_s`. A probe that ends without calling (budget,
  cancel, deadline) hands the probe to the next task.

Pure bookkeeping with the clock passed in; one instance per Engine (per process). Workers learn on their
own: a breaker costs each process `threshold` failed calls, and nothing is shared through Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .routing import Health

PROBE_POLL_S = 0.2  # how often tasks waiting on a probe look again


@dataclass(frozen=True, eq=False)
class Ticket:
    """Permission for one attempt on `provider`; `probe` when it is the half-open trial call."""

    provider: str
    probe: bool = False


@dataclass
class _State:
    failures: int = 0  # consecutive server-side failures since the last success
    failing_since: float = 0.0  # when the first of them was seen
    opens: int = 0  # times opened since the last success (the hold doubles each time); 0 = closed
    open_until: float = 0.0
    probe: Ticket | None = None  # the half-open trial call in progress


@dataclass
class ProviderBreaker:
    health: Health
    threshold: int = 5  # consecutive failures that open it; 0 disables the breaker
    base_hold_s: float = 2.0
    max_hold_s: float = 30.0
    _states: dict[str, _State] = field(default_factory=dict)

    def admit(self, provider: str, now: float) -> tuple[Ticket | None, float]:
        """(a ticket, 0) when an attempt may call `provider` now; (None, seconds to wait before asking again)
        while it is open or another task's probe is out. Every ticket goes back through release()."""
        st = self._states.get(provider)
        if st is None or st.opens == 0:
            return Ticket(provider), 0.0
        if now < st.open_until:
            return None, st.open_until - now
        if st.probe is not None:
            return None, PROBE_POLL_S
        st.probe = Ticket(provider, probe=True)
        return st.probe, 0.0

    def failure(self, provider: str, now: float) -> float | None:
        """Count a server-side failure. Returns the hold in seconds when this failure opened the breaker."""
        if self.threshold <= 0:
            return None
        st = self._states.setdefault(provider, _State())
        if st.failures == 0:
            st.failing_since = now
        st.failures += 1
        if now < st.open_until or st.failures < self.threshold:
            return None  # already open (a call that was in flight), or not enough failures yet
        st.opens += 1
        st.probe = None
        hold = min(self.max_hold_s, self.base_hold_s * 2.0 ** (st.opens - 1))
        st.open_until = now + hold
        self.health.cooldown_until[provider] = max(self.health.cooldown_until.get(provider, 0.0), st.open_until)
        return hold

    def success(self, provider: str, sent_at: float | None = None) -> None:
        """The provider answered a call sent at `sent_at`: close the breaker and forget the failures. An answer
        to a call sent before the first of those failures was seen is old news (it was already in flight when
        the provider began failing: at the start of an outage, slow answers to earlier calls come after the
        fast 5xx) and changes nothing; else each one closed the breaker and let every waiting task call into
        the outage again."""
        st = self._states.get(provider)
        if st is not None and sent_at is not None and st.failures and sent_at < st.failing_since:
            return
        if st is not None and (st.failures or st.opens):
            # A cooldown the breaker set ends now (a 429's cooldown is on a model key, not on the provider).
            if self.health.cooldown_until.get(provider) == st.open_until:
                self.health.cooldown_until.pop(provider, None)
            self._states[provider] = _State()

    def release(self, ticket: Ticket) -> None:
        """The attempt is over. A probe that got no answer either way (it never called) lets the next task probe."""
        if ticket.probe:
            st = self._states.get(ticket.provider)
            if st is not None and st.probe is ticket:
                st.probe = None
