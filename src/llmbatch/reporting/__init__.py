"""Read-side views of a job: status counts, result lines, and the spend audit (report).

Every number in the report is a SQL aggregate over the ledger (attempts), so the report reconciles to the
job totals by construction; `check_reconciliation` verifies it anyway and the report shows the verdict.
"""

from .audit import attempt_lines, build_report, overrun_rows
from .openai_export import openai_batch_line, openai_rejected_line
from .results import channel_of, result_jsonl, result_lines
from .status import status_dict

__all__ = [
    "attempt_lines",
    "build_report",
    "channel_of",
    "openai_batch_line",
    "openai_rejected_line",
    "overrun_rows",
    "result_jsonl",
    "result_lines",
    "status_dict",
]
