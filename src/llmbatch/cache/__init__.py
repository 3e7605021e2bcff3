"""Never pay twice: the response cache (an identical request already answered is served at $0), one call for
identical tasks in flight, and prompt-cache-aware scheduling of tasks that share a long prefix.

- keys.py: the request digest (provider, model, the exact body sent, the scope)
- entries/: the response_cache table's operations (lookup/claim, store, release, evict, record a hit)
- prompt.py: shared-prefix planning (minimum cacheable lengths, when an Anthropic breakpoint pays, warm-up)
- hook.py: what the engine calls: serve() before the reservation, remember() after a validated success
- estimate.py / report.py: what `estimate` and `report` show about the caches
"""
