"""Terminal output with rich: summary and report tables, the live progress bar. Tables go to stdout;
progress goes to stderr so `--json` and pipes stay clean."""

from __future__ import annotations

from typing import Any

from rich.console import Console, JustifyMethod
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .money import fmt_usd, usd_to_picos
from .quality.report import quality_lines
from .terminal_text import rich_printable as safe


def _console(stderr: bool = False) -> Console:
    c = Console(stderr=stderr, highlight=False)
    # Piped output has no terminal width; rich would default to 80 and truncate model names.
    return c if c.is_terminal else Console(stderr=stderr, highlight=False, width=160)


out = _console()
err = _console(stderr=True)


def _usd(x: float | None) -> str:
    """A report's USD figure (a JSON number with 6 decimals), shown like every other amount."""
    return fmt_usd(None if x is None else usd_to_picos(x))


def summary_table(summary: dict[str, Any]) -> None:
    """The end of a run: counts, spend, model mix, rejected lines, skip reasons (jobs.summary's dict)."""
    counts, job_id = summary["counts"], summary["job_id"]
    t = Table(title=f"job {job_id} — {summary['status']}", title_justify="left")
    for col in ("total", "succeeded", "failed", "skipped", "cancelled", "spent", "budget"):
        t.add_column(col, justify="right")
    t.add_row(
        str(counts["total"]),
        str(counts["succeeded"]),
        str(counts["failed"]),
        str(counts["skipped"]),
        str(counts["cancelled"]),
        fmt_usd(summary["spent_picos"]),
        fmt_usd(summary["budget_picos"]) if summary["budget_picos"] is not None else "none",
    )
    out.print(t)
    mix = Table(title="model mix (every attempt, failed ones included)", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("model", "left"),
        ("tasks", "right"),
        ("attempts", "right"),
        ("input tok", "right"),
        ("output tok", "right"),
        ("cost", "right"),
    )
    for col, j in columns:
        mix.add_column(col, justify=j)
    for r in summary["model_mix"]:
        mix.add_row(
            safe(f"{r['provider']}/{r['model']}"),
            str(r["tasks"]),
            str(r["attempts"]),
            f"{r['input_tokens']:,}",
            f"{r['output_tokens']:,}",
            fmt_usd(r["cost_picos"]),
        )
    out.print(mix)
    if summary["invalid_lines"]:
        out.print(f"[yellow]{summary['invalid_lines']} input line(s) rejected[/] — `llmbatch status {job_id} --errors`")
    if summary["skips"]:
        out.print("skipped: " + ", ".join(f"{k}={v}" for k, v in summary["skips"].items()))
    out.print(f"details: llmbatch report {job_id}   results: llmbatch results {job_id} -o results.jsonl")


def jobs_table(rows: list[dict[str, Any]], *, store: str) -> None:
    """`llmbatch jobs` (jobs.list_jobs rows)."""
    t = Table(title=f"jobs in {store}", title_justify="left")
    for col in ("job", "name", "created (UTC)", "status", "done", "ok", "failed", "skipped", "spent", "budget"):
        t.add_column(col, justify="left" if col in ("job", "name", "created (UTC)", "status") else "right")
    for r in rows:
        c = r["counts"]
        done = c["succeeded"] + c["failed"] + c["skipped"] + c["cancelled"]
        t.add_row(
            r["job_id"],
            safe(r["name"] or ""),
            r["created_at"].replace("T", " ").rstrip("Z"),
            r["status"],
            f"{done:,}/{c['total']:,}",
            f"{c['succeeded']:,}",
            f"{c['failed']:,}",
            f"{c['skipped']:,}",
            _usd(r["spent_usd"]),
            _usd(r["budget_usd"]) if r["budget_usd"] is not None else "none",
        )
    out.print(t)
    if not rows:
        out.print("no jobs yet")


class LiveProgress:
    """A progress bar fed by the engine's in-process counters (embedded runs)."""

    def __init__(self, total: int, *, enabled: bool, done: int = 0):
        self.total, self.enabled, self.done = total, enabled, done  # done: finished before this run (resume)
        self._p: Progress | None = None

    def __enter__(self):
        if self.enabled:
            self._p = Progress(
                TextColumn("[bold]running"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            self._p.__enter__()
            self._task = self._p.add_task("run", total=self.total, completed=self.done, info="")
        return self

    def update(self, engine) -> None:
        if not self._p:
            return
        f = engine.progress.finished
        done = sum(f.values())
        self._p.update(
            self._task,
            completed=self.done + done,
            info=f"ok={f['succeeded']} failed={f['failed']} skipped={f['skipped']} "
            f"attempts={engine.progress.attempts} escalations={engine.progress.escalations}",
        )

    def __exit__(self, *exc):
        if self._p:
            self._p.__exit__(*exc)


class WatchProgress:
    """`status --watch`: a bar fed by jobs.wait_for's polls (job row, task counts)."""

    def __enter__(self):
        self._p = Progress(
            TextColumn("[bold]{task.fields[status]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=err,
        )
        self._p.__enter__()
        self._tid = None
        return self

    def update(self, job: dict[str, Any], c: dict[str, int]) -> None:
        done = c["succeeded"] + c["failed"] + c["skipped"] + c["cancelled"]
        info = (
            f"ok={c['succeeded']} failed={c['failed']} skipped={c['skipped']} running={c['running']} "
            f"spent={fmt_usd(job['spent_picos'])}"
        )
        if self._tid is None:
            self._tid = self._p.add_task("watch", total=c["total"], status=job["status"], info=info)
        self._p.update(self._tid, completed=done, total=c["total"], status=job["status"], info=info)

    def __exit__(self, *exc):
        self._p.__exit__(*exc)


def report_tables(rep: dict[str, Any]) -> None:
    t = Table(title=f"spend audit — job {rep['job_id']} ({rep['status']})", title_justify="left", show_header=False)
    t.add_column("item")
    t.add_column("value", justify="right")
    for label, value in (
        ("spent", fmt_usd(rep["spent_picos"])),
        ("reserved (calls in flight or unknown)", _usd(rep["reserved_usd"])),
        ("budget", _usd(rep["budget_usd"])),
        ("ledger sum (attempt rows)", fmt_usd(rep["ledger_picos"])),
        ("spent == ledger", "yes" if rep["reconciled"] else "[bold red]NO[/]"),
        ("cost per 1k tasks", _usd(rep["cost_per_1k_tasks_usd"])),
        (f"baseline: finished requests on {rep['baseline']['model']}", _usd(rep["baseline"]["cost_usd"])),
        ("savings vs baseline", _usd(rep["savings_usd"])),
        *_cache_rows(rep),
    ):
        t.add_row(label, value)
    out.print(t)
    m = Table(title="by provider / model (every attempt, failed ones included)", title_justify="left")
    for col in ("provider", "model", "tasks", "attempts", "input", "cached", "output", "reasoning", "cost"):
        m.add_column(col, justify="left" if col in ("provider", "model") else "right")
    for r in rep["by_model"]:
        m.add_row(
            safe(r["provider"]),
            safe(r["model"]),
            str(r["tasks"]),
            str(r["attempts"]),
            f"{r['input_tokens']:,}",
            f"{r['cached_tokens']:,}",
            f"{r['output_tokens']:,}",
            f"{r['reasoning_tokens']:,}",
            _usd(r["cost_usd"]),
        )
    out.print(m)
    c = rep["counts"]
    out.print(
        f"tasks: {c['total']} total, {c['succeeded']} succeeded, {c['failed']} failed, {c['skipped']} skipped, "
        f"{c['cancelled']} cancelled; escalations: {rep['escalations']}"
        + (("; skips: " + ", ".join(f"{k}={v}" for k, v in rep["skips"].items())) if rep["skips"] else "")
    )
    if rep["unpriced_attempts"]:
        out.print(
            f"[bold red]{len(rep['unpriced_attempts'])} attempt(s) could not be priced by the catalog; "
            f"they are charged at their reserved upper bound. First: {safe(rep['unpriced_attempts'][0])}[/]"
        )
    if rep.get("overruns"):
        first = rep["overrun_attempts"][0]
        out.print(
            f"[bold red]{rep['overruns']} attempt(s) billed ABOVE their reservation (overrun): the provider "
            f"counted more tokens than the bound allowed for. Largest: {safe(first['model'])} task "
            f"{safe(first['task_id'])} billed ${first['cost_usd']} against ${first['reserved_usd']} reserved[/]"
        )
    if rep.get("stop_reason"):
        out.print(f"[bold red]dispatch stopped: {safe(rep['stop_reason'])}[/]")
    if rep["unsettled_attempts"]:
        out.print(
            f"[yellow]{rep['unsettled_attempts']} attempt(s) with unknown outcome still hold their reservation; "
            f"run `llmbatch reconcile {rep['job_id']}`[/]"
        )
    if rep["most_expensive_tasks"]:
        e = Table(title="most expensive tasks", title_justify="left")
        for col in ("id", "model", "attempts", "cost"):
            e.add_column(col)
        for x in rep["most_expensive_tasks"]:
            e.add_row(safe(x["id"]), safe(x["model"]), str(x["attempts"]), _usd(x["cost_usd"]))
        out.print(e)
    for line in quality_lines(rep.get("quality")):
        out.print(line, markup=False)


def _cache_rows(rep: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if rep.get("cache"):
        rows.append(
            ("response cache: tasks answered / saved", f"{rep['cache']['hits']:,} / {_usd(rep['cache']['saved_usd'])}")
        )
    pc = rep.get("prompt_cache")
    if pc and pc["calls"]:
        rate = f"{pc['hit_rate']:.0%}" if pc["hit_rate"] is not None else "-"
        rows.append(
            (
                "prompt cache: hit rate / cached / written tokens",
                f"{rate} / {pc['cached_tokens']:,} / {pc['cache_write_tokens']:,}",
            )
        )
        rows.append(("prompt cache: saved (net of write premiums)", _usd(pc["saved_usd"])))
    return rows


def estimate_table(plan) -> None:
    d = plan.estimate_dict()
    t = Table(
        title=f"estimate — {d['tasks']} tasks ({d['unroutable']} unroutable, {d['invalid_lines']} invalid lines)",
        title_justify="left",
    )
    for col in ("model", "tasks", "input tok (est)", "output tok (est)", "expected", "upper bound"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in d["by_model"]:
        t.add_row(
            safe(r["model"]),
            str(r["tasks"]),
            f"{r['input_tokens']:,}",
            f"{r['output_tokens']:,}",
            _usd(r["estimated_usd"]),
            _usd(r["upper_bound_usd"]),
        )
    t.add_row("[bold]total", str(d["tasks"]), "", "", _usd(d["estimated_usd"]), _usd(d["upper_bound_usd"]))
    out.print(t)
    if d.get("cache") and d["cache"]["hits"]:
        out.print(
            f"response cache: {d['cache']['hits']:,} task(s) would be answered from earlier identical calls "
            f"($0; {_usd(d['cache']['saved_usd'])} expected saved, not in the totals above)"
        )
    if d.get("prompt_cache") and d["prompt_cache"]["cached_tokens"]:
        out.print(
            f"prompt cache: {d['prompt_cache']['cached_tokens']:,} input tokens expected to be read from the "
            f"provider's cache, {_usd(d['prompt_cache']['saved_usd'])} saved (already in the totals)"
        )


def route_table(items: list[dict[str, Any]], *, total: int, explain: bool) -> None:
    """The first tasks' routes (planning.route_item dicts); `total` is how many tasks the file had."""
    t = Table(title="routing", title_justify="left", show_lines=explain)
    t.add_column("id")
    t.add_column("model")
    t.add_column("est", justify="right")
    t.add_column("why" if not explain else "why / cheaper models not eligible")
    for it in items:
        why = safe(it["reason"])
        if explain and it.get("not_chosen"):
            why += "\n" + "\n".join(f"  ✗ {safe(r['model'])}: {safe(r['reason'])}" for r in it["not_chosen"])
        if it["warnings"]:
            why += "\n" + "\n".join(f"  ! {safe(w)}" for w in it["warnings"])
        t.add_row(safe(it["id"]), safe(it["model"]), _usd(it["estimated_usd"]), why)
    out.print(t)
    if total > len(items):
        out.print(f"... {total - len(items)} more (use --limit or --json)")


def models_table(rows: list[dict[str, Any]]) -> None:
    t = Table(title="catalog (USD per 1M tokens)", title_justify="left")
    for col in (
        "provider",
        "model",
        "tier",
        "status",
        "input",
        "cached",
        "cache write",
        "output",
        "context",
        "max out",
        "capabilities",
    ):
        t.add_column(
            col,
            justify="right" if col in ("input", "cached", "cache write", "output", "context", "max out") else "left",
        )
    for r in rows:
        t.add_row(
            r["provider"],
            r["model"],
            r["tier"] + (" (reasoning)" if r["reasoning"] else ""),
            r["status"],
            f"{r['input_per_mtok']:g}",
            f"{r['cached_input_per_mtok']:g}",
            f"{r['cache_write_per_mtok']:g}",
            f"{r['output_per_mtok']:g}",
            f"{r['context_window']:,}",
            f"{r['max_output_tokens']:,}",
            ", ".join(r["capabilities"]),
        )
    out.print(t)


# ------------------------------------------------------------------------------- CSV (results, report --csv)

RESULT_CSV_COLUMNS = [
    "id",
    "status",
    "provider",
    "model",
    "output",
    "error",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "attempts",
]
REPORT_CSV_COLUMNS = [
    "provider",
    "model",
    "tasks",
    "attempts",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
]


def results_csv(out, lines) -> None:
    """`results --format csv`: one row per task; a structured output as its JSON text."""
    import csv

    import orjson

    w = csv.writer(out)
    w.writerow(RESULT_CSV_COLUMNS)
    for r in lines:
        o = r["output"]
        w.writerow(
            [
                r["id"],
                r["status"],
                r["provider"],
                r["model"],
                o if isinstance(o, str) or o is None else orjson.dumps(o).decode(),
                r["error"],
                *r["usage"].values(),
                r["cost_usd"],
                r["attempts"],
            ]
        )


def report_csv(out, rep: dict[str, Any]) -> None:
    """`report --csv`: the by-model table."""
    import csv

    w = csv.writer(out)
    w.writerow(REPORT_CSV_COLUMNS)
    for r in rep["by_model"]:
        w.writerow([r[c] for c in REPORT_CSV_COLUMNS])  # cost_usd: the exact Decimal
