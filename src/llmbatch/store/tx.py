"""Transactions: the engine-level and connection-level forms of an operation, and the work on shared rows
deferred to the end of a transaction, taken in one lock order.

Why defer: every reservation and settlement changes its job's row (and the daily window's row). Done where
the operation runs, the first such UPDATE takes the row lock and holds it while the rest of the transaction
(a whole batch of operations, under group commit) is sent, so workers queue on one row. Deferred, each
transaction touches each such row once or twice, last, just before commit. Lock order is then the same
everywhere: the rows an operation writes as it runs (tasks, attempts) first, then each deferred part in
LOCK_RANK order, each taking its rows in sorted order. The one part today is the ledger's (ledger/budget.py:
job rows sorted, then window rows sorted).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, ClassVar, Protocol, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")
P = TypeVar("P", bound="DeferredPart")


class DeferredPart(Protocol):
    LOCK_RANK: ClassVar[int]

    def flush(self, conn: Connection, refused: dict[Any, Exception]) -> None:
        """Apply this part's work; a result the transaction's operations returned that must not stand goes
        into `refused` with its error (a reservation that did not fit, by attempt id)."""


class Deferred:
    """The deferred work of one transaction, by part; flush() applies it before commit."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: dict[type[DeferredPart], DeferredPart] = {}

    def part(self, kind: type[P]) -> P:
        """This transaction's instance of `kind` (created on first use)."""
        p = self._parts.get(kind)
        if p is None:
            p = self._parts[kind] = kind()  # each part's constructor takes no arguments
        return p  # type: ignore[return-value]

    def flush(self, conn: Connection) -> dict[Any, Exception]:
        """Apply every part, in lock order. Returns the refused results (see DeferredPart.flush)."""
        refused: dict[Any, Exception] = {}
        for kind in sorted(self._parts, key=lambda k: k.LOCK_RANK):
            self._parts[kind].flush(conn, refused)
        return refused


def in_transaction(
    fn: Callable[..., T] | None = None,
    *,
    refusable: bool = False,
    many: Callable[..., list] | None = None,
    item: Callable[..., Any] | None = None,
):
    """Write `fn(conn, ...)`, call `fn(engine, ...)`: one transaction per call. The connection-level form
    stays reachable as `fn.on_conn` (the group-commit store runs many in one transaction). A function with a
    `deferred` parameter gets a Deferred, flushed before commit; a refused result raises (rolling back).

    For the group-commit store (aio.py): `refusable` says the function's result can be refused at flush (the
    call then fails with the refusal); `many(conn, items, *, deferred)` is its set form, run once for all its
    calls in a transaction, each call's arguments turned into an item by `item(*args, **kwargs)`."""
    if fn is None:
        return functools.partial(in_transaction, refusable=refusable, many=many, item=item)
    takes_deferred = "deferred" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def run(engine: Engine, *args: Any, **kwargs: Any) -> T:
        with engine.begin() as conn:
            if not takes_deferred:
                return fn(conn, *args, **kwargs)
            deferred = Deferred()
            result = fn(conn, *args, deferred=deferred, **kwargs)
            refused = deferred.flush(conn)
            if refused:
                raise next(iter(refused.values()))
            return result

    run.on_conn = fn  # type: ignore[attr-defined]
    run.takes_deferred = takes_deferred  # type: ignore[attr-defined]
    run.refusable = refusable  # type: ignore[attr-defined]
    run.many = (many, item) if many is not None else None  # type: ignore[attr-defined]
    return run
