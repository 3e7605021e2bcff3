"""Indexes for reads at a million tasks: the report's most expensive tasks and its escalation count

Revision ID: 0009
Revises: 0007

- ix_tasks_job_cost (job_id, cost_picos): `report`'s top tasks by cost read the index backwards and stop
  after N rows, instead of sorting every task of the job.
- ix_tasks_job_escalated (job_id, escalations) WHERE escalations > 0: the escalation total sums only the
  escalated tasks (a few percent), not a scan of every task row.
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_job_cost", "tasks", ["job_id", "cost_picos"], if_not_exists=True)
    op.create_index("ix_tasks_job_escalated", "tasks", ["job_id", "escalations"], if_not_exists=True,
                    sqlite_where=sa.text("escalations > 0"), postgresql_where=sa.text("escalations > 0"))


def downgrade() -> None:
    op.drop_index("ix_tasks_job_escalated", "tasks", if_exists=True)
    op.drop_index("ix_tasks_job_cost", "tasks", if_exists=True)
