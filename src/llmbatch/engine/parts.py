"""What the Engine's parts (calls.py, answers.py, money.py: mixins of one class) use of the whole, declared for
the type checker: the attributes Engine.__init__ sets and the methods another part defines."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..batch_channel import BatchRunner
    from ..breaker import ProviderBreaker
    from ..cache.hook import CacheHook
    from ..config import Settings
    from ..liveness import Presence
    from ..routing import Health
    from ..slots import InFlightSlots
    from ..store.aio import AsyncStore
    from .state import Progress


class EngineParts:
    settings: Settings
    store: AsyncStore
    providers: Any  # providers.ProviderSet: .get(simulate) -> (adapters by provider, provider names with keys)
    limiter: Any  # ratelimit: acquire / refund / cooldown
    worker_id: str
    health: Health
    breaker: ProviderBreaker
    slots: InFlightSlots
    progress: Progress
    rng: random.Random
    overrun_factor: dict[str, Fraction]
    stopping: bool
    daily_cap_picos: int | None
    presence: Presence | None
    cache: CacheHook
    batches: BatchRunner
    _starting: dict[tuple[str, int], Callable[[], None]]
    _unsent: set[int]

    if TYPE_CHECKING:
        # Defined by one part, called by another.
        async def is_cancelled(self, *args: Any, **kwargs: Any) -> bool: ...
        async def _finish(self, *args: Any, **kwargs: Any) -> str: ...
        async def _end(self, *args: Any, **kwargs: Any) -> str: ...
        async def _admit(self, *args: Any, **kwargs: Any) -> Any: ...
        def _request_for(self, *args: Any, **kwargs: Any) -> Any: ...
        async def _answered(self, *args: Any, **kwargs: Any) -> Any: ...
        async def _settle_rejected(self, *args: Any, **kwargs: Any) -> None: ...
        def _observe_latency(self, *args: Any, **kwargs: Any) -> None: ...
        async def _still_holding(self, *args: Any, **kwargs: Any) -> bool: ...
        async def _reserve_ahead(self, *args: Any, **kwargs: Any) -> int | None: ...
        async def _release_unsent(self, *args: Any, **kwargs: Any) -> None: ...
        async def _reserve(self, *args: Any, **kwargs: Any) -> int: ...
        def _amount(self, *args: Any, **kwargs: Any) -> int: ...
        def _cost(self, *args: Any, **kwargs: Any) -> tuple[int, str, str | None]: ...
        async def _settle_error(self, *args: Any, **kwargs: Any) -> None: ...
        async def _settle(self, *args: Any, **kwargs: Any) -> None: ...
        def _learn_overrun(self, *args: Any, **kwargs: Any) -> None: ...
        async def _check_overrun(self, *args: Any, **kwargs: Any) -> None: ...
