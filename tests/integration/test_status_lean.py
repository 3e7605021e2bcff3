"""The lean `status` (status_reader.py: no SQLAlchemy, pydantic or settings model) prints exactly what the full
path prints, text and --json, with the same exit code, on SQLite and Postgres, for every way of addressing a job;
and it hands over to the full path where only that one can answer (no such job, a store not yet created)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, update

from llmbatch import status_reader
from llmbatch.cli import main
from llmbatch.cli import reading as cli_reading
from llmbatch.errors import LLMBatchError
from llmbatch.store import repo
from llmbatch.store.db import dispose_all, get_engine
from llmbatch.store.schema import jobs, tasks

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request):
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def _jobs(url: str) -> dict[str, str]:
    """Three jobs: queued with a budget; interrupted with running, finished and queued tasks and a stop reason;
    failed (the newest), named like the first."""
    out = {}
    with get_engine(url).begin() as c:
        for name, status, n, budget in (("alpha", "queued", 0, 5 * 10**12), ("beta", "interrupted", 6, None),
                                        ("alpha", "failed", 2, 10**9)):  # fmt: skip
            job_id = repo.create_job(
                c, name=name, spec={}, input_path=None, executor="local", simulate=True, budget_picos=budget,
                max_cost_per_task_picos=None,
            )  # fmt: skip
            statuses = (
                ["running", "running", "succeeded", "failed", "skipped", "queued"][:n]
                if n > 2
                else ["succeeded", "failed"][:n]
            )
            for seq, st in enumerate(statuses):
                c.execute(insert(tasks).values(job_id=job_id, seq=seq, task_id=f"t{seq}", line_no=seq + 1,
                                               task_type="summarize", payload="{}", status=st))  # fmt: skip
            c.execute(
                update(jobs).where(jobs.c.id == job_id).values(
                    status=status, spent_picos=123_456_789 * n, reserved_picos=7 * n, invalid_lines=n // 2,
                    stop_reason="an overrun took spend past the cap" if name == "beta" else None,
                    created_at=1.7e9 + len(out), total_tasks=n,
                    succeeded_tasks=statuses.count("succeeded"), failed_tasks=statuses.count("failed"),
                    skipped_tasks=statuses.count("skipped"),
                )
            )  # fmt: skip
            out[f"{name}-{len(out)}"] = job_id
    dispose_all()
    return out


def _status(args: list[str], url: str, monkeypatch, *, lean: bool) -> tuple[int, str, bool]:
    used = []

    def spy(job_id, by_name):
        st = real(job_id, by_name) if lean else None
        used.append(st is not None)
        return st

    real = cli_reading.__dict__["_lean_status"]
    monkeypatch.setattr(cli_reading, "_lean_status", spy)
    monkeypatch.setenv("LLMBATCH_DATABASE_URL", url)
    r = CliRunner().invoke(main, ["status", *args])
    monkeypatch.setattr(cli_reading, "_lean_status", real)
    if r.exception is not None and not isinstance(r.exception, SystemExit):  # entrypoint() makes it one line, exit 2
        assert isinstance(r.exception, LLMBatchError), r.exception
        return 2, str(r.exception), used == [True]
    return r.exit_code, r.output, used == [True]


def test_lean_status_prints_what_the_full_status_prints(store_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    ids = _jobs(store_url)
    addressings = [[], [ids["alpha-0"]], [ids["beta-1"]], ["--name", "alpha"], ["beta"], [ids["alpha-2"]]]
    for args in addressings:
        for fmt in ([], ["--json"]):
            full = _status(args + fmt, store_url, monkeypatch, lean=False)
            lean = _status(args + fmt, store_url, monkeypatch, lean=True)
            assert lean[2] is True and full[2] is False, (args, fmt)  # each path really ran
            assert lean[:2] == full[:2], (args, fmt)
    code, out, _ = _status([ids["beta-1"]], store_url, monkeypatch, lean=True)
    assert "interrupted with 3 task(s) left" in out and code == 0  # running 2 + queued 1; not final
    code, out, _ = _status([], store_url, monkeypatch, lean=True)
    assert out.startswith(f"{ids['alpha-2']}  failed  total=2 ") and code == 3  # the newest job


def test_what_only_the_full_path_can_answer_is_left_to_it(store_url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    _jobs(store_url)
    code, out, lean = _status(["no-such-job"], store_url, monkeypatch, lean=True)
    assert (code, lean) == (2, False) and "no job 'no-such-job' in the store" in out
    new = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(status_reader.Fallback):  # not created yet: the full path creates and migrates it
        status_reader.read_status(new, None, None)
    code, out, lean = _status([], new, monkeypatch, lean=True)
    assert (code, lean) == (2, False) and "no jobs yet in the store" in out


def test_the_postgres_url_forms_sqlalchemy_accepts_through_libpq_or_psycopg(fresh_postgres_url, monkeypatch):
    url = fresh_postgres_url.split("?")[0]
    ids = _jobs(url)
    rest = url.split("://", 1)[1]
    assert type(status_reader._postgres(url)[0]).__name__ == "_Libpq"  # psycopg's own libpq, through ctypes
    got = []
    for libpq in (True, False):
        if not libpq:  # no usable libpq: psycopg
            monkeypatch.setattr(status_reader, "_Libpq", None)
        for form in (f"postgresql+psycopg://{rest}", f"postgresql://{rest}", f"postgres://{rest}",
                     f"postgresql://{rest}?connect_timeout=5&application_name=lean"):  # fmt: skip
            got += [status_reader.read_status(form, job_id, None) for job_id in ids.values()]
    assert got[0]["counts"]["running"] == 0 and got[1]["counts"]["running"] == 2 and got[1]["stop_reason"]
    assert got == got[:3] * 8  # every form, both drivers: the same answers
    with pytest.raises(status_reader.Fallback):  # a server that is not there: the full path words the error
        status_reader.read_status("postgresql://postgres@127.0.0.1:1/nothing", None, None)
