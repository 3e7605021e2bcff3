"""Presence renewals are single-flight: tasks that find the presence stale at once share one renewal."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from llmbatch.liveness import Presence


class SlowStore:
    """Stands in for AsyncStore.with_engine: each renewal (a presence beat) takes a while and is counted."""

    def __init__(self, lapsed: bool = False):
        self.beats, self.lapsed = 0, lapsed

    async def with_engine(self, fn, *a, **k):
        self.beats += 1
        await asyncio.sleep(0.05)
        return SimpleNamespace(lapsed=self.lapsed)


def test_concurrent_confirms_share_one_renewal():
    async def main():
        store = SlowStore()
        p = Presence(store, "h:1:x", ttl_s=10.0, chunk_size=50)
        epochs = await asyncio.gather(*(p.confirm() for _ in range(200)))  # stale: never renewed
        assert store.beats == 1 and set(epochs) == {0} and p.fresh()
        await p.confirm()  # fresh now: no renewal
        assert store.beats == 1
        store.lapsed = True
        await asyncio.gather(*(p.renew() for _ in range(5)))  # a lapse found once bumps the epoch once
        assert store.beats == 2 and p.epoch == 1

    asyncio.run(main())
