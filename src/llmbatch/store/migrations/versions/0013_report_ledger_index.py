"""ix_attempts_job_status_model (job_id, status, provider, model, channel) replaces ix_attempts_job_status

Revision ID: 0013
Revises: 0012

`report` reads a job's ledger once, grouped by (status, provider, model, channel) (store/reads.py). Walking
this index, both stores hand the rows over already grouped, instead of sorting a million ledger rows to group
them (SQLite: ~2 s of a 1M-task report). It starts with the old index's columns, so every query that used
(job_id, status) uses it the same way; an attempt still has one entry in it.
"""
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attempts_job_status_model", "attempts", ["job_id", "status", "provider", "model", "channel"],
                    if_not_exists=True)
    op.drop_index("ix_attempts_job_status", "attempts", if_exists=True)


def downgrade() -> None:
    op.create_index("ix_attempts_job_status", "attempts", ["job_id", "status"], if_not_exists=True)
    op.drop_index("ix_attempts_job_status_model", "attempts", if_exists=True)
