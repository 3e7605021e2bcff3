"""jobs.succeeded_tasks / failed_tasks / skipped_tasks / cancelled_tasks: finished-task counts on the job row

Revision ID: 0012
Revises: 0009

`status` of a million-task job read its counts with a GROUP BY over every task; the job row now carries
the finished counts, moved in the transactions that change a task's status (store/job_counts.py). Existing
jobs are backfilled from their tasks.

ix_attempts_job_overrun (job_id) WHERE overrun: `report`'s overrun count and list read the overrun attempts
(a handful) instead of every ledger row of the job. The predicate is written as each dialect renders
`overrun.is_(True)`, so the planners match it.
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None

_COLUMNS = {"succeeded_tasks": "succeeded", "failed_tasks": "failed", "skipped_tasks": "skipped",
            "cancelled_tasks": "cancelled"}


def upgrade() -> None:
    # Plain ALTER TABLE ADD COLUMN, not batch mode: on SQLite a batch rebuild of `jobs` drops the old table,
    # and its ON DELETE CASCADE would take every task with it.
    for col in _COLUMNS:
        op.add_column("jobs", sa.Column(col, sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.execute("UPDATE jobs SET " + ", ".join(
        f"{col} = (SELECT count(*) FROM tasks WHERE tasks.job_id = jobs.id AND tasks.status = '{status}')"
        for col, status in _COLUMNS.items()))
    op.create_index("ix_attempts_job_overrun", "attempts", ["job_id"], if_not_exists=True,
                    sqlite_where=sa.text("overrun IS 1"), postgresql_where=sa.text("overrun IS true"))


def downgrade() -> None:
    op.drop_index("ix_attempts_job_overrun", "attempts", if_exists=True)
    for col in _COLUMNS:  # ALTER TABLE DROP COLUMN (SQLite >= 3.35), for the same reason
        op.execute(f"ALTER TABLE jobs DROP COLUMN {col}")
