"""The spend dashboard: server-rendered pages (no build step). Charts are drawn in the browser by Frappe
Charts (MIT), vendored in static/ (`npm pack frappe-charts`, dist/frappe-charts.min.umd.js).

/dashboard              jobs of the caller: status, live progress (the page refreshes while any job runs), spend
/dashboard/jobs/{id}    one job for someone who never used the CLI: what it cost, on what, over time, what it
                        saved against the baseline model, its most expensive tasks and its errors
/dashboard/jobs/{id}/attempts.csv   every ledger row, for a spreadsheet
"""

from __future__ import annotations

import csv
import io
import time
from decimal import Decimal
from html import escape
from typing import Any

import orjson
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..money import PICOS_PER_USD
from ..reporting import attempt_lines, build_report
from ..store import repo
from ..store.schema import JobStatus, attempts, jobs, tasks
from .errors import unauthorized

CHART_JS = "/static/frappe-charts.min.umd.js"
_TIME_STEPS_S = (0.1, 0.25, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
_MAX_POINTS = 60


def money(picos: int | None) -> str:
    """Dollars for people: cents above $1, six decimals below."""
    if picos is None:
        return "—"
    d = Decimal(int(picos)) / PICOS_PER_USD
    return f"${d:,.2f}" if abs(d) >= 1 else f"${d:.6f}"


def _picos(usd: float | None) -> int | None:
    """A report's `*_usd` (an exact decimal) back to pico-dollars, exactly."""
    return None if usd is None else int(Decimal(str(usd)) * PICOS_PER_USD)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "—"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1f2937}
header{background:#111827;color:#fff;padding:12px 24px}header a{color:#fff;text-decoration:none;font-weight:600}
main{padding:20px 24px;max-width:1200px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;
text-align:left;font-size:14px}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;padding:12px 16px;border-radius:8px;
min-width:150px;box-shadow:0 1px 2px #0001}.card .v{font-size:22px;font-weight:600}.card .k{font-size:12px;color:#6b7280}
.progress{background:#e5e7eb;border-radius:4px;height:10px;width:160px}.progress>div{background:#2563eb;height:10px;border-radius:4px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}.panel{background:#fff;border-radius:8px;padding:8px 12px}
.status{padding:2px 8px;border-radius:10px;font-size:12px;background:#e5e7eb}.st-succeeded{background:#d1fae5}
.st-failed,.st-budget_exhausted{background:#fee2e2}.st-running{background:#dbeafe}.muted{color:#6b7280;font-size:13px}
"""


def _page(title: str, body: str, *, refresh: bool = False, scripts: str = "") -> HTMLResponse:
    meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
    return HTMLResponse(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}
<title>{escape(title)} · llmbatch</title><style>{_STYLE}</style></head>
<body><header><a href="/dashboard">llmbatch · spend dashboard</a></header><main>{body}</main>{scripts}</body></html>""")


def error_page(status: int, message: str) -> HTMLResponse:
    page = _page(
        "Not found" if status == 404 else "Error",
        f"<h1>{'Not found' if status == 404 else 'Error'}</h1><p>{escape(message)}</p>"
        '<p><a href="/dashboard">All jobs</a></p>',
    )
    page.status_code = status
    return page


def _progress(counts: dict[str, int]) -> str:
    done = sum(counts[s] for s in ("succeeded", "failed", "skipped", "cancelled"))
    pct = 100 * done / counts["total"] if counts["total"] else 100
    return (
        f'<div class="progress" title="{done} of {counts["total"]} done"><div style="width:{pct:.0f}%"></div></div>'
        f'<span class="muted">{done:,} / {counts["total"]:,}</span>'
    )


def _status(s: str) -> str:
    return f'<span class="status st-{escape(s)}">{escape(s.replace("_", " "))}</span>'


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | frozenset[int] = frozenset()) -> str:
    th = "".join(f'<th class="{"n" if i in numeric else ""}">{h}</th>' for i, h in enumerate(head))
    trs = "".join(
        "<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs or '<tr><td colspan=9 class=muted>none</td></tr>'}</tbody></table>"


def _owned_jobs(conn, owner: str | None, limit: int = 100) -> list[dict[str, Any]]:
    q = select(jobs).where(jobs.c.owner.is_(None) if owner is None else jobs.c.owner == owner)
    return [dict(r) for r in conn.execute(q.order_by(jobs.c.created_at.desc()).limit(limit)).mappings()]


def spend_over_time(conn, job_id: str) -> tuple[list[str], list[int]]:
    """Cumulative settled spend per time step (at most ~60 points, the step a round number of seconds)."""
    lo, hi = conn.execute(
        select(func.min(attempts.c.finished_at), func.max(attempts.c.finished_at)).where(
            attempts.c.job_id == job_id, attempts.c.settled.is_(True)
        )
    ).first()
    if lo is None:
        return [], []
    step = next((s for s in _TIME_STEPS_S if (hi - lo) / s <= _MAX_POINTS), _TIME_STEPS_S[-1])
    bucket = func.floor((attempts.c.finished_at - lo) / step)
    rows = conn.execute(
        select(bucket, func.sum(attempts.c.cost_picos))
        .where(attempts.c.job_id == job_id, attempts.c.settled.is_(True))
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    start = conn.execute(select(func.min(attempts.c.started_at)).where(attempts.c.job_id == job_id)).scalar()
    clock = "%H:%M:%S" if step >= 1 else "%H:%M:%S.{frac}"

    def label(ts: float) -> str:
        return time.strftime(clock, time.gmtime(ts)).format(frac=f"{ts % 1:.2f}"[2:])

    labels, values, total = [label(min(start, lo))], [0], 0
    for b, cost in rows:
        total += int(cost or 0)
        labels.append(label(lo + (int(b) + 1) * step))
        values.append(total)
    return labels, values


def by_channel(conn, job_id: str) -> list[tuple[str, int, int]]:
    q = (
        select(attempts.c.channel, func.count(), func.sum(attempts.c.cost_picos))
        .where(attempts.c.job_id == job_id)
        .group_by(attempts.c.channel)
        .order_by(attempts.c.channel)
    )
    return [(ch, int(n), int(c or 0)) for ch, n, c in conn.execute(q)]


def errors_by_class(conn, job_id: str) -> list[tuple[str, int, str | None]]:
    q = (
        select(attempts.c.error_class, func.count(), func.max(attempts.c.error_message))
        .where(attempts.c.job_id == job_id, attempts.c.error_class.is_not(None))
        .group_by(attempts.c.error_class)
        .order_by(func.count().desc())
    )
    return [(c, int(n), m) for c, n, m in conn.execute(q)]


def failed_tasks(conn, job_id: str, limit: int = 20) -> list[Any]:
    return conn.execute(
        select(tasks.c.task_id, tasks.c.status, tasks.c.error)
        .where(tasks.c.job_id == job_id, tasks.c.status.in_(("failed", "skipped")))
        .order_by(tasks.c.seq)
        .limit(limit)
    ).all()


def money_unit(picos: list[int]) -> tuple[str, int]:
    """The unit a money chart reads best in (its axis has no room for six decimals): name, pico-dollars per unit."""
    top = max(picos, default=0)
    if top >= 10 * PICOS_PER_USD:
        return "USD", PICOS_PER_USD
    if top >= PICOS_PER_USD // 10:
        return "US cents", PICOS_PER_USD // 100
    return "millionths of a dollar", PICOS_PER_USD // 10**6


def _chart(el: str, title: str, kind: str, labels: list[str], picos: list[int], *, money_axis: bool = True) -> str:
    """A chart's data for the page's renderer. Money comes in pico-dollars and is shown in money_unit()."""
    unit, per = money_unit(picos) if money_axis else ("", 1)
    values = [float(Decimal(v) / per) for v in picos]
    spec = {
        "title": f"{title} ({unit})" if unit else title,
        "type": kind,
        "height": 260,
        "animate": 0,
        "barOptions": {"spaceRatio": 0.4},
        "axisOptions": {"xIsSeries": kind == "line"},
        "data": {"labels": labels, "datasets": [{"name": unit or title, "values": values}]},
        "colors": ["#2563eb", "#10b981", "#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6"],
    }
    data = orjson.dumps(spec).decode().replace("</", "<\\/")  # no "</script>" inside the JSON
    return (
        f'<div class="panel"><div id="{el}" class="chart" data-unit="{escape(unit)}"></div>'
        f'<script type="application/json" id="{el}-data">{data}</script></div>'
    )


_RENDER = f"""<script src="{CHART_JS}"></script><script>
document.querySelectorAll('div.chart').forEach(function (el) {{
  var spec = JSON.parse(document.getElementById(el.id + '-data').textContent);
  if (!spec.data.labels.length) {{ el.innerHTML = '<p class="muted">' + spec.title + ': no spend yet</p>'; return; }}
  var unit = el.dataset.unit;
  if (unit) spec.tooltipOptions = {{formatTooltipY: function (d) {{ return d.toLocaleString() + ' ' + unit; }}}};
  new frappe.Chart(el, spec);
}});
</script>"""


def routes(svc) -> list[Route]:
    engine = svc.engine

    def jobs_page(request: Request) -> Response:
        owner = svc.principal(request)
        with engine.connect() as conn:
            rows, live = [], False
            for j in _owned_jobs(conn, owner):
                counts = repo.task_counts(conn, j["id"])
                live |= j["status"] not in JobStatus.terminal
                rows.append(
                    [
                        f'<a href="/dashboard/jobs/{escape(j["id"])}">{escape(j["id"])}</a>',
                        escape(j["name"] or ""),
                        _when(j["created_at"]),
                        _status(j["status"]),
                        _progress(counts),
                        money(j["spent_picos"]),
                        money(j["budget_picos"]),
                    ]
                )
        body = (
            "<h1>Jobs</h1><p class=muted>Every job and what it spent. Click a job for where the money went."
            + (" This page refreshes while a job runs.</p>" if live else "</p>")
            + _table(["Job", "Name", "Created", "Status", "Progress", "Spent", "Budget"], rows, {5, 6})
        )
        return _page("Jobs", body, refresh=live)

    def job_page(request: Request) -> Response:
        owner = svc.principal(request)
        job_id = request.path_params["job_id"]
        with engine.connect() as conn:
            job = svc.job_for(conn, job_id, owner)
            rep = build_report(conn, job_id, svc.catalog, baseline_model=svc.settings.baseline_model)
            counts = repo.task_counts(conn, job_id)
            labels, cumulative = spend_over_time(conn, job_id)
            channels = by_channel(conn, job_id)
            eclasses = errors_by_class(conn, job_id)
            bad = failed_tasks(conn, job_id)
            rejected = repo.input_error_rows(conn, job_id, limit=20)
        live = job["status"] not in JobStatus.terminal
        base = rep["baseline"]
        base_picos = _picos(base["cost_usd"])
        saved = None if base_picos is None else base_picos - job["spent_picos"]
        per_1k = job["spent_picos"] * 1000 // counts["total"] if counts["total"] else None
        cards = [
            ("Spent", f'<span id="job-spent">{money(job["spent_picos"])}</span>'),
            ("Budget", money(job["budget_picos"])),
            (f"Saved vs {escape(base['model'])}", money(saved)),
            ("Cost per 1,000 tasks", money(per_1k)),
            ("Reserved (calls in flight)", money(job["reserved_picos"])),
            ("Tasks succeeded", f"{counts['succeeded']:,} / {counts['total']:,}"),
        ]
        by_model = [(r["model"], r["cost_picos"]) for r in rep["by_model"]]
        body = [
            f'<h1>Job <span id="job-id">{escape(job_id)}</span> {_status(job["status"])}</h1>',
            f"<p class=muted>{escape(job['name'] or '')} · created {_when(job['created_at'])} · finished "
            f"{_when(job['finished_at'])}{' · this page refreshes while the job runs' if live else ''}</p>",
            '<div class="cards">'
            + "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in cards)
            + "</div>",
            f"<p>{_progress(counts)} · failed {counts['failed']:,} · skipped {counts['skipped']:,} · cancelled "
            f"{counts['cancelled']:,} · queued {counts['queued']:,} · running {counts['running']:,}</p>",
            '<div class="grid">',
            _chart("chart-models", "Spend by model", "bar", [m for m, _ in by_model], [c for _, c in by_model]),
            _chart(
                "chart-channels", "Spend by channel", "pie", [c for c, _, _ in channels], [c for _, _, c in channels]
            ),
            _chart("chart-time", "Spend over time, cumulative", "line", labels, cumulative),
            _chart(
                "chart-tasks",
                "Tasks by outcome",
                "donut",
                [s for s in ("succeeded", "failed", "skipped", "cancelled") if counts[s]],
                [counts[s] for s in ("succeeded", "failed", "skipped", "cancelled") if counts[s]],
                money_axis=False,
            ),
            "</div>",
            "<h2>Spend by model</h2>",
            _table(
                ["Provider", "Model", "Tasks", "Calls", "Input tokens", "Output tokens", "Cost"],
                [
                    [
                        escape(r["provider"]),
                        escape(r["model"]),
                        f"{r['tasks']:,}",
                        f"{r['attempts']:,}",
                        f"{r['input_tokens']:,}",
                        f"{r['output_tokens']:,}",
                        money(r["cost_picos"]),
                    ]
                    for r in rep["by_model"]
                ],
                {2, 3, 4, 5, 6},
            ),
            "<h2>Spend by channel</h2>",
            _table(["Channel", "Calls", "Cost"], [[escape(c), f"{n:,}", money(m)] for c, n, m in channels], {1, 2}),
            f"<h2>Savings</h2><p>The same tokens on the baseline model <b>{escape(base['model'])}</b> would have "
            f"cost <b>{money(base_picos)}</b>; this job spent <b>{money(job['spent_picos'])}</b>"
            + (f", saving <b>{money(saved)}</b>." if saved is not None else f" ({escape(base['error'] or '')}).")
            + "</p>",
            "<h2>Most expensive tasks</h2>",
            _table(
                ["Task", "Model", "Calls", "Cost"],
                [
                    [escape(t["id"]), escape(t["model"] or ""), str(t["attempts"]), money(_picos(t["cost_usd"]))]
                    for t in rep["most_expensive_tasks"]
                ],
                {2, 3},
            ),
            "<h2>Errors</h2>",
            _table(
                ["Error class", "Calls", "Example"],
                [[escape(c), f"{n:,}", escape((m or "")[:200])] for c, n, m in eclasses],
                {1},
            ),
            _table(
                ["Task", "Status", "Why"],
                [[escape(t.task_id), _status(t.status), escape((t.error or "")[:300])] for t in bad],
            ),
            _table(["Rejected line", "Why"], [[str(r["line_no"]), escape(r["reason"])] for r in rejected])
            if rejected
            else "",
            f'<p><a href="/dashboard/jobs/{escape(job_id)}/attempts.csv">Download every call (CSV)</a></p>',
        ]
        return _page(f"Job {job_id}", "".join(body), refresh=live, scripts=_RENDER)

    def attempts_csv(request: Request) -> Response:
        owner = svc.principal(request)
        job_id = request.path_params["job_id"]
        buf = io.StringIO()
        with engine.connect() as conn:
            svc.job_for(conn, job_id, owner)
            w = None
            for a in attempt_lines(conn, job_id):
                if w is None:
                    w = csv.DictWriter(buf, fieldnames=list(a))
                    w.writeheader()
                w.writerow(a)
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{job_id}-attempts.csv"'},
        )

    def login_form(request: Request) -> Response:
        return _page(
            "Sign in",
            '<h1>Sign in</h1><form method="post" action="/dashboard/login">'
            '<p>API token: <input name="token" type="password" size="50"> <button>Sign in</button></p>'
            "</form><p class=muted>`llmbatch tokens create NAME` makes a token.</p>",
        )

    async def login(request: Request) -> Response:
        form = await request.form()
        secret = str(form.get("token") or "")
        with engine.connect() as conn:
            from . import tokens

            if tokens.authenticate(conn, secret) is None:
                raise unauthorized("Incorrect API key provided.")
        resp = RedirectResponse("/dashboard", status_code=303)
        resp.set_cookie("llmbatch_token", secret, httponly=True, samesite="strict")
        return resp

    return [
        Route("/dashboard", jobs_page),
        Route("/dashboard/jobs/{job_id}", job_page),
        Route("/dashboard/jobs/{job_id}/attempts.csv", attempts_csv),
        Route("/dashboard/login", login_form, methods=["GET"]),
        Route("/dashboard/login", login, methods=["POST"]),
    ]
