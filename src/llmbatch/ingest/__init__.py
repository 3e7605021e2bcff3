"""Input files -> validated tasks, one job per module:

- reader: stream a JSONL file and judge each line (`parse_lines` -> TaskLine or `LineError`). Pure: it
  imports nothing from the store, so planning (estimate, route) can read a file without SQL.
- seen_ids: the duplicate-id table. explain: pydantic errors as one sentence. limits: the operator's
  InputLimits on a valid line. openai_batch: OpenAI Batch lines -> native lines.
- load: `ingest` writes the accepted lines to `tasks` and the rejected ones to `input_errors`.

`ingest` and `IngestReport` are imported from load on first use, so importing this package (or the
parser) never loads the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .explain import explain_validation_error
from .reader import DEFAULT_MAX_LINE_BYTES, LineError, parse_lines

if TYPE_CHECKING:
    from .load import IngestReport, ingest

__all__ = ["DEFAULT_MAX_LINE_BYTES", "IngestReport", "LineError", "explain_validation_error", "ingest", "parse_lines"]


def __getattr__(name: str) -> Any:
    if name in ("ingest", "IngestReport"):
        from . import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
