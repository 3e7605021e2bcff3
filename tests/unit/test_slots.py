"""In-flight slots (slots.py): a task's second call is served before fresh tasks; no slot is lost or doubled."""

from __future__ import annotations

import asyncio

from llmbatch.slots import InFlightSlots, Slot


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_retry_takes_a_freed_slot_before_fresh_tasks_that_asked_first():
    async def main():
        slots = InFlightSlots(2)
        order: list[str] = []
        held = [Slot(slots), Slot(slots)]
        for s in held:
            await s.take(urgent=False)

        async def want(name: str, urgent: bool):
            s = Slot(slots)
            await s.take(urgent=urgent)
            order.append(name)

        waiters = [asyncio.create_task(want(f"fresh{i}", False)) for i in range(3)]
        await _settle()
        waiters.append(asyncio.create_task(want("retry", True)))
        await _settle()
        assert order == [] and slots.waiting == 4
        held[0].free()
        await _settle()
        assert order == ["retry"]
        held[1].free()
        held[1].free()  # freed at most once: the second call gives nothing back
        await _settle()
        assert order == ["retry", "fresh0"]
        assert slots.waiting == 2
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    asyncio.run(main())


def test_free_slots_are_taken_at_once_and_counted_exactly():
    async def main():
        slots = InFlightSlots(3)
        taken = [Slot(slots) for _ in range(3)]
        for s in taken:
            await asyncio.wait_for(s.take(urgent=False), 0.1)  # no wait while a slot is free
        late = asyncio.create_task(Slot(slots).take(urgent=False))
        await _settle()
        assert not late.done()  # the fourth waits
        taken[2].free()
        await asyncio.wait_for(late, 0.1)

    asyncio.run(main())


def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on():
    async def main():
        slots = InFlightSlots(1)
        first = Slot(slots)
        await first.take(urgent=False)
        got: list[str] = []

        async def want(name):
            await Slot(slots).take(urgent=False)
            got.append(name)

        a = asyncio.create_task(want("a"))
        b = asyncio.create_task(want("b"))
        await _settle()
        first.free()  # hands the slot to a's future...
        a.cancel()  # ...but a is cancelled before it resumes: the slot must go to b, not vanish
        await _settle()
        assert a.cancelled() and b.done() and got == ["b"]

    asyncio.run(main())


def test_a_waiter_cancelled_while_waiting_leaves_the_queue():
    async def main():
        slots = InFlightSlots(1)
        first = Slot(slots)
        await first.take(urgent=False)
        w = asyncio.create_task(Slot(slots).take(urgent=True))
        await _settle()
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert slots.waiting == 0
        first.free()
        again = Slot(slots)
        await asyncio.wait_for(again.take(urgent=False), 0.1)  # the slot came back, not to the cancelled waiter

    asyncio.run(main())
