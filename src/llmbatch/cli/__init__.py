"""The `llmbatch` command: thin click commands over the library (the job lifecycle lives in llmbatch.jobs; this
package parses and prints). Exit codes (DESIGN.md): 0 ok; 2 usage, input, configuration, store or broker error;
3 the job finished with failed tasks; 4 the job stopped on its budget cap; 5 cancelled; 130 interrupted (resumable).

One module per group of commands, each registering on the `main` group (main.py, with the entry point):
running (run, submit, resume, retry), reading (status, results, report, jobs), control (cancel, reconcile,
db), planning (estimate, route), calibration (calibrate), catalog (models, catalog), service (serve, tokens),
workers (worker, simulator); common.py and options.py hold what they share. Every heavy import is inside the
command that needs it: `llmbatch --help` loads click and nothing of the store, pydantic or HTTP."""

from . import calibration, catalog, control, planning, reading, running, service, workers  # noqa: F401 - registers
from .main import entrypoint, main

__all__ = ["entrypoint", "main"]
