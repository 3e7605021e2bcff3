"""In-flight slots: how many provider calls one process has out at once, and who gets a freed one first.

A freed slot goes first to a task that has already made a call (a retry, an escalation to a dearer model,
a grown output cap), then to fresh tasks in the order they asked. Without that, a task's second call queues
behind every claimed task waiting for its first, a whole wave later at a fixed latency, and the job's last
escalations finish one wave after the rest (issue 14: the tail of a job is where its throughput goes).
"""

from __future__ import annotations

import asyncio
from collections import deque


class InFlightSlots:
    """A counting semaphore with two FIFO queues: `urgent` waiters are served before the others."""

    def __init__(self, n: int):
        self._free = n
        self._urgent: deque[asyncio.Future] = deque()
        self._fresh: deque[asyncio.Future] = deque()

    async def acquire(self, *, urgent: bool) -> None:
        if self._free > 0 and not self._urgent and not self._fresh:
            self._free -= 1
            return
        queue = self._urgent if urgent else self._fresh
        fut = asyncio.get_running_loop().create_future()
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.cancelled():  # cancelled while waiting: leave the queue (release() may have dropped it)
                if fut in queue:
                    queue.remove(fut)
            else:  # the slot was handed over, then the waiter was cancelled before it resumed: pass it on
                self.release()
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._fresh):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self._free += 1

    @property
    def waiting(self) -> int:
        return sum(1 for q in (self._urgent, self._fresh) for f in q if not f.done())


class Slot:
    """One attempt's in-flight slot, freed at most once (the attempt frees it as soon as the call answered)."""

    __slots__ = ("slots", "held")

    def __init__(self, slots: InFlightSlots):
        self.slots, self.held = slots, False

    async def take(self, *, urgent: bool) -> None:
        await self.slots.acquire(urgent=urgent)
        self.held = True

    def free(self) -> None:
        if self.held:
            self.held = False
            self.slots.release()
