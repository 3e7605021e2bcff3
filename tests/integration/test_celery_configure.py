"""One process that configures the Celery app for another broker publishes there from then on (the benchmarks'
smoke tests switch brokers in one process; they used to reset Celery's pools by hand)."""

from __future__ import annotations

import pytest
import redis

from llmbatch.config import Settings
from llmbatch.executors.celery_app import QUEUE, app, configure
from tests.support.databases import flushed_redis_db

pytestmark = pytest.mark.integration


def test_configure_for_another_broker_publishes_there(redis_url):
    urls = [flushed_redis_db(redis_url, db) for db in (7, 8)]
    try:
        for n, url in enumerate(urls):
            configure(Settings(broker_url=url))
            with app.producer_or_acquire() as producer:
                app.send_task("llmbatch.test.noop", args=[n], queue=QUEUE, producer=producer)
        lengths = []
        for url in urls:
            client = redis.Redis.from_url(url)
            try:
                lengths.append(client.llen(QUEUE))
            finally:
                client.close()
        assert lengths == [1, 1], f"messages per broker database: {lengths}"
    finally:
        for db in (7, 8):
            flushed_redis_db(redis_url, db)
        app.close()
