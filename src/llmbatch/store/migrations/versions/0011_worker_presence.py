"""worker_presence: short-lived liveness records of worker processes (fast recovery of a dead worker's tasks)

Revision ID: 0011
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_presence",
        sa.Column("worker_id", sa.String(length=120), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id"),
    )
    op.create_index("ix_worker_presence_expires_at", "worker_presence", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_worker_presence_expires_at", table_name="worker_presence")
    op.drop_table("worker_presence")
