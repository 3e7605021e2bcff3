"""Decision tables per request size: a job whose sizes repeat routes a later task of a size by looking up the
table built the second time that size came, instead of pricing every model again."""

from __future__ import annotations

from typing import Callable

from ..catalog import ModelInfo
from .rules import _cooling_left, _Fit
from .types import Candidate, Health, Rejection, _frozen


# An eligible model in route(): (estimated picos, observed latency, key), the sort key, then the model, upper
# bound picos, input tokens expected and at most, expected output, completion cap and adaptation notes.
_Row = tuple[int, float, str, ModelInfo, int, int, int, int, int, tuple[str, ...]]
_Verdicts = tuple["Rejection | _Fit", ...]
_Order = tuple[tuple[int, ...], ...]  # per run of equal estimates, the order of its rows


class _SizedRoute:
    """route()'s decision for one request size (token counts, images, output cap and budget, max cost) against
    one shape's verdicts, when no eligible model is cooling down, but for the order of equal estimates, which
    observed latency breaks. A job's tasks often come in a few sizes, and for a size seen before route() only
    reads this table: its Candidates and Rejections are shared by the decisions, as the static rejections
    always were (they are immutable), and it builds none."""

    __slots__ = ("verdicts", "rejected", "pin_warnings", "_models", "_ordered", "_ties", "_by_order")

    def __init__(self, verdicts: _Verdicts, rows: list[_Row], rejected: list[Rejection], pins: list[str]) -> None:
        self.verdicts = verdicts  # held: the tables are keyed by the verdicts' id
        self.rejected = tuple(rejected)
        self.pin_warnings = tuple(pins)
        self._models = tuple(row[3] for row in rows)
        ordered = sorted(rows, key=lambda r: (r[0], r[2]))  # by estimate, then key (latency comes in between)
        self._ordered = ordered
        ties, i = [], 0  # runs of equal estimates: there latency decides (unknown sorts last), then the key
        while i < len(ordered):
            j = i + 1
            while j < len(ordered) and ordered[j][0] == ordered[i][0]:
                j += 1
            if j - i > 1:
                ties.append((i, j))
            i = j
        self._ties = tuple(ties)
        self._by_order: dict[_Order, tuple[Candidate, ...]] = {}

    def cooling(self, health: Health, now: float) -> bool:
        """Whether an eligible model (or its provider) is cooling down: route() then decides from scratch."""
        return bool(health.cooldown_until) and any(_cooling_left(health, m, now) is not None for m in self._models)

    def candidates(self, latency: dict[str, float]) -> tuple[Candidate, ...]:
        ordered = self._ordered
        order: _Order = ()
        if self._ties:
            inf = float("inf")
            order = tuple(
                tuple(sorted(range(a, b), key=lambda k: (latency.get(ordered[k][2], inf), ordered[k][2])))
                for a, b in self._ties
            )
        got = self._by_order.get(order)
        if got is None:
            rows = list(ordered)
            for (a, b), idx in zip(self._ties, order):
                rows[a:b] = [ordered[k] for k in idx]
            if len(self._by_order) >= 64:  # latencies drift: keep it small
                self._by_order.clear()
            got = self._by_order[order] = _candidates(rows)
        return got


def _candidates(eligible: list[_Row]) -> tuple[Candidate, ...]:
    """The Candidates of `eligible`, in its order (the first is the cheapest)."""
    cheapest = eligible[0][0] if eligible else 0
    return tuple(
        [
            _frozen(
                Candidate,
                model=model,
                estimated_picos=picos,
                upper_bound_picos=upper,
                input_tokens_est=in_est,
                input_tokens_upper=in_upper,
                output_tokens_est=out_est,
                completion_cap=cap,
                first=i == 0,
                cheapest_picos=cheapest,
                notes=notes,
            )
            for i, (picos, _, _, model, upper, in_est, in_upper, out_est, cap, notes) in enumerate(eligible)
        ]
    )


# Tables by (id of the verdicts, request size, max cost), only for sizes seen twice (most sizes of a job with
# varied inputs come once), and a few hundred at most: they hold objects the garbage collector walks.
_SIZED: dict[tuple[int | None, ...], _SizedRoute] = {}
_SEEN: dict[tuple[int | None, ...], bool] = {}
_SIZED_MAX, _SIZED_MAX_SEEN = 256, 4096


# Whether tables pay for their building: [uses, builds, sizes seen twice] since the last decay. A job with
# thousands of sizes that each come a few times builds tables it hardly uses (and the cap clears them all):
# routing then ran at ~0.86x the speed of building none (bench_route's varied mix). So while builds outnumber
# uses, only one size in _SAMPLE gets a table: enough to see the uses come back when the sizes start repeating.
_TABLE_USE = [0, 0, 0]
_DECAY_AT, _SAMPLE = 4096, 16


def _tables_pay() -> bool:
    uses, builds, candidates = _TABLE_USE
    if candidates >= _DECAY_AT:  # the recent past counts, not the whole process's life
        _TABLE_USE[:] = [uses // 2, builds // 2, candidates // 2]
    _TABLE_USE[2] += 1
    if builds < 64 or uses >= builds or candidates % _SAMPLE == 0:
        _TABLE_USE[1] += 1
        return True
    return False


def _remember(key: tuple[int | None, ...], table: _SizedRoute) -> None:
    if len(_SIZED) >= _SIZED_MAX:
        _SIZED.clear()
    _SIZED[key] = table


def table_for(size_key: tuple[int | None, ...]) -> _SizedRoute | None:
    """The table of a size route() has seen twice, if it was kept."""
    return _SIZED.get(size_key)


def used() -> None:
    """A route() decided from a table."""
    _TABLE_USE[0] += 1


def seen(size_key: tuple[int | None, ...], build: Callable[[], _SizedRoute]) -> None:
    """route() priced a size with no model cooling down: the second time a size comes, it may get a table."""
    if _SEEN.pop(size_key, False):
        if _tables_pay():
            _remember(size_key, build())
    else:
        if len(_SEEN) >= _SIZED_MAX_SEEN:
            _SEEN.clear()
        _SEEN[size_key] = True
