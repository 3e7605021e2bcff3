"""The store seen from asyncio, with group commit.

Hundreds of tasks in flight each want a reservation, a settlement and an outcome record. One transaction
per operation would make the commit (and, on SQLite, the single write lock) the bottleneck. Instead each
store thread takes every operation waiting in the queue and runs them in ONE transaction; each caller's
future resolves only after that commit, so nobody calls a provider on a reservation that is not durable.

Rules that make this safe:
- Operations are store functions taking a Connection: plain ones, or the connection-level forms of
  @in_transaction ones (`fn.on_conn`). An expected refusal (BudgetExceeded) leaves no write behind, so it can
  share a transaction with others.
- Any other error inside a batch rolls the batch back and re-runs each operation in its own transaction,
  so one bad operation cannot fail its neighbours.
- A lost connection (Postgres restart, network blip) rolls back and retries with backoff until the
  store answers again: workers ride out a store outage instead of failing tasks.

On Postgres, where each statement is a round trip, the calls of a function that has a set form (`many`, see
tx.in_transaction: the ledger's reservations and settlements) run as one call of that form per batch;
everything else in the batch runs one by one.

On SQLite, where a statement costs microseconds, the hottest ones skip SQLAlchemy's execution layer
(prepared.py): there the Python around a statement was most of its cost.

SQLite gets one thread (it has one writer anyway). Postgres gets two, so one batch runs while the next
fills. Four were measured worse at a fixed 1 s latency on 2 cores (Celery, same runs, 4 pairs: 0.79-0.81 of
the bare loop with 4 against 0.81-0.85 with 2, and ~20 % more worker CPU): smaller batches group less and
the threads contend for the GIL; at zero latency the two are equal (2.11 ms per task).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from ..errors import BudgetExceeded, StoreError
from .db import classify_store_error, get_engine, is_sqlite
from .tx import Deferred

T = TypeVar("T")
log = logging.getLogger("llmbatch.store")

MAX_BATCH = 128  # operations per transaction
OUTAGE_GIVE_UP_S = 600.0  # a store down longer than this fails the operations waiting on it
# Refusals the caller expects and handles; they do not poison the batch they ran in.
EXPECTED = (BudgetExceeded,)


def _is_disconnect(e: BaseException) -> bool:
    """A connection drop (retried until the store answers). A full disk, a read-only or a locked database is
    an OperationalError too, but waiting does not fix it: db.classify_store_error names it and the run stops."""
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    return isinstance(e, OperationalError) and classify_store_error(e) is None


class _Op:
    __slots__ = ("fn", "args", "kwargs", "future", "loop", "deferring", "refusable", "many", "urgent")

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, *, group: bool = False, urgent: bool = False):
        form = _FORMS.get(fn)
        if form is None:
            if len(_FORMS) >= 1024:  # store functions are module-level; a caller passing new callables is bounded
                _FORMS.clear()
            form = _FORMS[fn] = _form(fn)
        self.fn, self.deferring, self.refusable, many = form
        self.many = many if group else None
        self.urgent = urgent  # a provider call waits for it (see AsyncStore.call_first)
        self.args, self.kwargs = args, kwargs
        # The caller's asyncio future and its loop (set by AsyncStore.call): the store thread hands the result
        # over with one loop.call_soon_threadsafe per batch (see _deliver), not a concurrent Future per
        # operation chained by asyncio.wrap_future (two futures, a lock and a wake-up of the loop each).
        self.future: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None


def _form(fn: Callable) -> tuple[Callable, bool, bool, Any]:
    """(connection-level form, takes the transaction's Deferred, refusable, (set form, item maker) or None):
    read once per function (see tx.in_transaction)."""
    return (
        getattr(fn, "on_conn", fn),
        getattr(fn, "takes_deferred", False),  # takes the transaction's Deferred
        getattr(fn, "refusable", False),  # its result can be refused when the Deferred flushes
        # (set form, item maker): all such ops of a batch run as one call of the set form (see tx.in_transaction)
        getattr(fn, "many", None),
    )


_FORMS: dict[Callable, tuple[Callable, bool, bool, Any]] = {}


class AsyncStore:
    def __init__(self, database_url: str, *, threads: int | None = None, max_batch: int = MAX_BATCH):
        self.engine: Engine = get_engine(database_url)
        self.max_batch = max_batch
        n = threads or (1 if is_sqlite(self.engine) else 2)
        # Set forms where a statement costs a round trip (Postgres).
        self.grouped = not is_sqlite(self.engine)
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._local = threading.local()  # each store thread's connection (see _connection)
        self._threads = [
            threading.Thread(target=self._serve, name=f"llmbatch-store-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------------------ public API

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store function in the next batch's transaction: one taking a Connection, or one decorated
        with @in_transaction (its connection-level form runs)."""
        return await self._submit(_Op(fn, args, kwargs, group=self.grouped))

    read = write = call  # the same; the name says what the caller does

    async def call_first(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like call(), for an operation an in-flight slot waits on (a reservation): when a store thread's
        batch holds both kinds, these commit first in their own transaction, and the records (settlements,
        outcomes) after. At a fixed latency a wave of answers queues a batch of records just as the freed
        slots' reservations arrive; behind them each slot would idle for a whole batch."""
        return await self._submit(_Op(fn, args, kwargs, group=self.grouped, urgent=True))

    def _submit(self, op: _Op) -> asyncio.Future:
        loop = op.loop = asyncio.get_running_loop()
        fut = op.future = loop.create_future()
        self._queue.put(op)
        return fut

    async def with_engine(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run an engine-level function (one that manages its own transactions, like reconcile) off the loop."""
        return await asyncio.to_thread(fn, self.engine, *args, **kwargs)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=30)

    # ---------------------------------------------------------------------------- store thread

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._drop_connection()
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:  # shutting down: finish this batch, then stop
                    self._queue.put(None)
                    break
                batch.append(op)
            # An operation whose caller was cancelled (a heartbeat stopped with its unit, a task cut at shutdown)
            # before it started is dropped: nobody waits for it. One cancelled later still runs; its result is
            # then dropped (_deliver). Reading the flag from this thread is one attribute read under the GIL.
            batch = [op for op in batch if op.future is None or not op.future.cancelled()]
            urgent = [op for op in batch if op.urgent]
            parts = [batch]
            if urgent and len(urgent) < len(batch):  # reservations commit (and are answered) first
                parts = [urgent, [op for op in batch if not op.urgent]]
            for part in parts:
                if part:
                    results: list[tuple[_Op, bool, Any]] = []
                    self._run_batch(part, results)
                    _hand_over(results)

    def _run_batch(self, batch: list[_Op], out: list[tuple[_Op, bool, Any]]) -> None:
        """Run the batch; each operation's (op, ok, value) goes into `out`."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                results = self._in_one_transaction(batch)
            except Exception as e:  # noqa: BLE001 - classified below
                if _is_disconnect(e) and time.monotonic() - started < OUTAGE_GIVE_UP_S:
                    delay = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        log.warning(
                            "store unreachable (%s); retrying %d operation(s) in %.1fs",
                            type(e).__name__,
                            len(batch),
                            delay,
                        )
                    time.sleep(delay)
                    continue
                if _is_disconnect(e):
                    err = StoreError(f"the store has been unreachable for {OUTAGE_GIVE_UP_S:.0f}s: {type(e).__name__}")
                    out.extend((op, False, err) for op in batch)
                    return
                known = classify_store_error(e, str(self.engine.url))
                if known is not None:  # every operation of the batch would fail the same way
                    out.extend((op, False, known) for op in batch)
                    return
                if len(batch) == 1:
                    out.append((batch[0], False, e))
                    return
                # Not a connection problem: one operation is at fault. Isolate it so the rest succeed.
                for op in batch:
                    self._run_batch([op], out)
                return
            out.extend((op, ok, value) for op, (ok, value) in zip(batch, results))
            return

    def _connection(self) -> Connection:
        """This thread's connection, kept from batch to batch: a pool checkout and its reset on return cost
        more than a small batch's statements. Dropped after any error (see _in_one_transaction)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.engine.connect()
        return conn

    def _drop_connection(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection's close may fail too; it is gone either way
                log.debug("closing a store connection failed", exc_info=True)

    def _in_one_transaction(self, batch: list[_Op]) -> list[tuple[bool, Any]]:
        try:
            return self._run_in(self._connection(), batch)
        except BaseException:
            self._drop_connection()  # a connection that failed (dropped, invalidated) is not reused
            raise

    def _run_in(self, conn: Connection, batch: list[_Op]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = [(False, None)] * len(batch)
        groups: dict[Callable, list[int]] = {}
        with conn.begin():
            deferred = Deferred()
            for i, op in enumerate(batch):
                if op.many is not None:
                    groups.setdefault(op.fn, []).append(i)
                else:
                    results[i] = _run_one(conn, op, deferred)
            for idxs in groups.values():
                if len(idxs) == 1:
                    results[idxs[0]] = _run_one(conn, batch[idxs[0]], deferred)
                    continue
                grouped = batch[idxs[0]].many
                assert grouped is not None  # only operations with a set form were grouped
                many, item = grouped
                values = many(conn, [item(*batch[i].args, **batch[i].kwargs) for i in idxs], deferred=deferred)
                for i, value in zip(idxs, values):
                    results[i] = (True, value)
            refused = deferred.flush(conn)  # job and window rows, locked last and briefly
            if refused:
                answered = set()
                for i, op in enumerate(batch):
                    ok, value = results[i]
                    if op.refusable and ok and value in refused:
                        results[i] = (False, refused[value])
                        answered.add(value)
                if answered != refused.keys():
                    # A refusal no refusable result carries: an operation whose reservation did not fit would
                    # report success. Roll the batch back; _run_batch then runs each operation alone, and the
                    # one at fault fails with this error.
                    raise UnreportedRefusal(
                        f"a reservation was refused ({next(iter(refused.values()))}) but the operation that made "
                        "it cannot report a refusal: run it on its own transaction (with_engine) or mark it "
                        "@in_transaction(refusable=True)"
                    )
        return results


class UnreportedRefusal(RuntimeError):
    """A deferred refusal that no operation of the transaction could report (a programming error)."""


def _hand_over(results: list[tuple[_Op, bool, Any]]) -> None:
    """From the store thread: the batch's results to their callers, one wake-up of each caller's loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, bool, Any]]] = {}
    for item in results:
        loop = item[0].loop
        if loop is not None:
            by_loop.setdefault(loop, []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # the caller's loop is closed: nobody waits for these results
            log.debug("store results for a closed event loop dropped (%d)", len(items))


def _deliver(items: list[tuple[_Op, bool, Any]]) -> None:
    """On the caller's loop: resolve each future its caller still waits for."""
    for op, ok, value in items:
        fut = op.future
        if fut is None or fut.done():  # cancelled by its caller meanwhile
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _run_one(conn, op: _Op, deferred: Deferred) -> tuple[bool, Any]:
    try:
        if op.deferring:
            return True, op.fn(conn, *op.args, deferred=deferred, **op.kwargs)
        return True, op.fn(conn, *op.args, **op.kwargs)
    except EXPECTED as e:
        return False, e
