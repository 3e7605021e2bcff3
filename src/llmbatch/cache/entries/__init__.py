"""The response_cache table: one row per request key, which is either
- an answer: written only after a succeeded, validated attempt was recorded, with its cost copied from that
  attempt's ledger row in SQL (never recomputed): the amount a later hit saves;
- an invalid verdict (invalid_error set, no output): the answer to this request failed validation, so tasks
  with it escalate at once instead of paying for the same invalid answer again; never served as an answer;
- a claim marker (neither): one worker is making the call that the other workers wait for.

Its operations, by job:
- claims.py: look a key up or claim it (claim_or_get, and its set form for group commit), take over a dead
  worker's claim, renew, release;
- answers.py: store an answer (put, put_many) or an invalid verdict (put_invalid), which keys are fresh
  (fresh_keys), settle a hit (record_hit);
- eviction.py: keep the table within its bound (evict, low_water);
- _table.py: what they share (Entry, the claim/verdict predicates, the hot statements built once per dialect).
Callers use `entries.<name>`, re-exported here: the cache hook calls them through this module, so a test that
replaces one here (e.g. entries.evict) replaces what the hook runs.
"""

from __future__ import annotations

from ._table import Entry
from .answers import fresh_keys, put, put_invalid, put_many, record_hit
from .claims import HIT, INVALID, LEAD, WAIT, ClaimItem, claim_or_get, claim_or_get_many, release, renew, take_over
from .eviction import evict, low_water

__all__ = [
    "HIT",
    "INVALID",
    "LEAD",
    "WAIT",
    "ClaimItem",
    "Entry",
    "claim_or_get",
    "claim_or_get_many",
    "evict",
    "fresh_keys",
    "low_water",
    "put",
    "put_invalid",
    "put_many",
    "record_hit",
    "release",
    "renew",
    "take_over",
]
