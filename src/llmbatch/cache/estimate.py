"""`estimate`: what the caches would save, without a call.

- CacheProbe: a task counts when its request (on the model routing picks) has a fresh answer in the store,
  or repeats an identical request earlier in the file (it would be called once and fanned out). An estimate
  never creates a store: with no database yet, only the in-file duplicates count.
- PrefixProbe: the prompt cache. A task whose shared prefix (cache/prompt.py) was seen before on the same
  model is expected to read it (priced at the cached-input price); the first one writes it (Anthropic: at
  the cache-write price). Prices go through catalog.pricing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import make_url

from ..catalog import Catalog
from ..catalog.pricing import price
from ..config import Settings
from ..errors import StoreError
from ..models import ChatRequest, JobSpec, Usage
from ..routing import Candidate
from .keys import request_key
from .prompt import MAX_TRACKED_PREFIXES, min_cacheable_tokens, shared_prefix

log = logging.getLogger("llmbatch.cache")


def _existing_store(url: str):
    from ..store.db import get_engine, is_sqlite, normalize_url  # the store only for a probe (planning stays pure)

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

        key = request_key(
            self.catalog,
            cand.model,
            Engine._request_for(None, request, cand),  # type: ignore[arg-type]
            simulate=self.simulate,
        )
        if key is None:
            return False
        if key in self._seen:
            return True
        self._seen.add(key)
        if self._engine is None:
            return False
        from ..store.db import reading
        from . import entries

        with reading(self._engine) as conn:
            return bool(entries.fresh_keys(conn, [key], ttl_s=self.ttl_s))


class PrefixProbe:
    def __init__(self, *, scheduling: bool = True) -> None:
        self.scheduling = scheduling  # off: no Anthropic breakpoints, so no Anthropic reads either
        self._seen: set[tuple[str, str]] = set()
        self.cached_tokens = 0

    def saving_picos(self, request: ChatRequest, cand: Candidate) -> int:
        """What the prompt cache is expected to save on this task (negative: the first Anthropic write)."""
        p = shared_prefix(request)
        minimum = min_cacheable_tokens(cand.model) if p is not None else None
        if (
            p is None
            or minimum is None
            or p.tokens < minimum
            or (cand.model.api == "anthropic" and not self.scheduling)
        ):
            return 0
        group = (cand.model.key, p.digest)
        plain = price(Usage(input_tokens=p.tokens), cand.model).picos
        if group in self._seen:
            self.cached_tokens += p.tokens
            cached = Usage(input_tokens=p.tokens, cached_tokens=p.tokens)
        elif len(self._seen) < MAX_TRACKED_PREFIXES:
            self._seen.add(group)
            if cand.model.api != "anthropic":
                return 0
            cached = Usage(input_tokens=p.tokens, cache_write_tokens=p.tokens)
        else:
            return 0
        return int(plain - price(cached, cand.model).picos)
