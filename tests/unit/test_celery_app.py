"""The Celery executor's pure parts: a late ack failing inside kombu must not kill the worker; the last units are smaller."""

from __future__ import annotations

import logging

import pytest
from celery.worker.request import Request
from kombu import Connection

from llmbatch.executors.celery_app import TASK_NAME, UnitRequest, app, run_range


def _request(cls, conn):
    """A run_range request for a real message taken from kombu's in-memory broker, whose ack fails as kombu's
    Redis channel does after a connection loss (AttributeError from `_connparams`)."""
    channel = conn.default_channel
    queue = conn.SimpleQueue("units")
    queue.put({"task": TASK_NAME}, headers={"id": "t1", "task": TASK_NAME})
    message = queue.get(timeout=1)

    def lost(delivery_tag, multiple=False):
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    channel.basic_ack = lost
    return cls(
        message,
        on_ack=message.ack_log_error,
        app=app,
        task=run_range,
        connection_errors=conn.connection_errors,
        body=((), {}, {}),
        headers={"id": "t1", "task": TASK_NAME},
        decoded=True,
    )


def test_an_ack_failing_after_the_broker_connection_is_lost_is_logged_not_raised(caplog):
    assert run_range.Request is UnitRequest
    with Connection("memory://") as conn:
        with pytest.raises(AttributeError):  # what killed the worker: Celery's own request lets it through
            _request(Request, conn).acknowledge()
    with Connection("memory://") as conn, caplog.at_level(logging.CRITICAL):
        request = _request(UnitRequest, conn)
        request.acknowledge()
        assert request.acknowledged
    assert "Couldn't ack" in caplog.text


def test_the_last_units_of_a_job_go_out_smaller_and_every_task_exactly_once():
    from llmbatch.executors.celery_app import TAIL_SPLIT, TAIL_UNITS, tapered

    unit = 50
    ranges = [(lo, min(lo + unit - 1, 1999)) for lo in range(0, 2000, unit)]
    ranges[3] = (150, 170)  # a gap (tasks already finished): 171..199 are done
    out = tapered(ranges, unit)
    seqs = [s for lo, hi in out for s in range(lo, hi + 1)]
    assert seqs == [s for lo, hi in ranges for s in range(lo, hi + 1)]  # the same tasks, once each, in order
    widths = [hi - lo + 1 for lo, hi in out]
    assert widths[: len(ranges) - TAIL_UNITS] == [hi - lo + 1 for lo, hi in ranges[: len(ranges) - TAIL_UNITS]]
    assert widths[len(ranges) - TAIL_UNITS :] == [unit // TAIL_SPLIT] * (TAIL_UNITS * TAIL_SPLIT)
    assert tapered([(0, 2)], unit) == [(0, 2)] and tapered([], unit) == []
    assert tapered([(0, 3)], 1) == [(0, 0), (1, 1), (2, 2), (3, 3)]  # unit 1: never a width of 0
