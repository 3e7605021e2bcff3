"""`estimate`: which planned tasks the response cache would answer, without a call.

A task counts when its request (on the model routing picks) has a fresh answer in the store, or repeats an
identical request earlier in the file (it would be called once and fanned out). An estimate never creates a
store: with no database yet, only the in-file duplicates count.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from ..catalog import Catalog
from ..config import Settings
from ..errors import StoreError
from ..models import ChatRequest, JobSpec
from ..routing import Candidate
from ..store.db import get_engine, is_sqlite, normalize_url, reading
from . import entries
from .keys import request_key

log = logging.getLogger("llmbatch.cache")


def _existing_store(url: str):
    url = normalize_url(url)
    if is_sqlite(url):
        path = make_url(url).database
        if not path or path == ":memory:" or not Path(path).is_file():
            return None
    try:
        return get_engine(url)
    except StoreError as e:
        log.warning("estimate: the response cache is not readable (%s); counting in-file duplicates only", e)
        return None


class CacheProbe:
    def __init__(self, settings: Settings, catalog: Catalog, spec: JobSpec):
        self.catalog, self.simulate, self.ttl_s = catalog, spec.simulate, settings.cache_ttl_s
        self._seen: set[str] = set()
        self._engine = _existing_store(settings.database_url)

    def answers(self, request: ChatRequest, cand: Candidate) -> bool:
        from ..engine import Engine  # the request the engine sends on this candidate (output cap and all)

        key = request_key(self.catalog, cand.model, Engine._request_for(None, request, cand),  # type: ignore[arg-type]
                          simulate=self.simulate)
        if key is None:
            return False
        if key in self._seen:
            return True
        self._seen.add(key)
        if self._engine is None:
            return False
        with reading(self._engine) as conn:
            return bool(entries.fresh_keys(conn, [key], ttl_s=self.ttl_s))
