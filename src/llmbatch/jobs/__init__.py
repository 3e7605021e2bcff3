"""The job lifecycle: the one layer every outside caller (CLI, executors, tests, benchmarks) uses to create,
find, run, wait for, interrupt, resume, cancel, retry and list jobs."""

from .identity import input_digest, spec_digest
from .lifecycle import (ResumePlan, attempt_lines, cancel, reconcile, report, result_lines, store_revision, create_job, done_and_left, find_job, find_same_command, finish_if_done,
                        input_errors, list_jobs, park, prepare_resume, progress, requeue, status, stop_after_interrupt,
                        store, store_label, summary)
from .running import CELERY, LOCAL, RunOutcome, check_broker, choose_executor, dispatch, run_embedded, wait_for

__all__ = [
    "attempt_lines", "reconcile", "report", "result_lines", "store_revision",
    "CELERY", "LOCAL", "ResumePlan", "RunOutcome", "cancel", "check_broker", "choose_executor", "create_job",
    "dispatch", "done_and_left", "find_job", "find_same_command", "finish_if_done", "input_digest", "input_errors",
    "list_jobs", "park", "prepare_resume", "progress", "requeue", "run_embedded", "spec_digest", "status",
    "stop_after_interrupt", "store", "store_label", "summary", "wait_for",
]
