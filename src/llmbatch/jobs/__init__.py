"""The job lifecycle: the one layer every outside caller (CLI, executors, tests, benchmarks) uses to create,
find, run, wait for, interrupt, resume, cancel, retry and list jobs."""

from .identity import input_digest, spec_digest
from .lifecycle import (ResumePlan, attempt_lines, cancel, create_job, done_and_left, find_job, find_same_command,
                        finish_if_done, input_errors, list_jobs, park, prepare_resume, progress, reconcile, report,
                        rejected_lines, requeue, result_lines, resume_same_command, status, stop_after_interrupt, store, store_label, store_revision,
                        summary)
from .running import CELERY, LOCAL, RunOutcome, check_broker, choose_executor, dispatch, run_embedded, wait_for

__all__ = [
    "CELERY", "LOCAL", "ResumePlan", "RunOutcome", "attempt_lines", "cancel", "check_broker", "choose_executor",
    "create_job", "dispatch", "done_and_left", "find_job", "find_same_command", "finish_if_done", "input_digest",
    "input_errors", "list_jobs", "park", "prepare_resume", "progress", "reconcile", "rejected_lines", "report", "requeue",
    "result_lines", "resume_same_command", "run_embedded", "spec_digest", "status", "stop_after_interrupt", "store", "store_label",
    "store_revision", "summary", "wait_for",
]
