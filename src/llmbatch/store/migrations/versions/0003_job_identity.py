"""jobs: input_digest and spec_digest (re-running the same command resumes its job), indexes for name lookup

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("spec_digest", sa.String(64), nullable=True))
    op.create_index("ix_jobs_digests", "jobs", ["input_digest", "spec_digest"])
    op.create_index("ix_jobs_name", "jobs", ["name"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_index("ix_jobs_name", "jobs")
    op.drop_index("ix_jobs_digests", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("spec_digest")
        batch.drop_column("input_digest")
