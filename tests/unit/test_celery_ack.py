"""A late ack that fails inside kombu once the broker connection is gone must not kill the worker."""

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
