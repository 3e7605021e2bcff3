"""discount channels: provider_batches (durable provider batch ids) and attempts.batch_ref / provider_batch_id

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_batches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("tag", sa.String(120), nullable=False),
        sa.Column("provider_batch_id", sa.String(200), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("reserved_picos", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(120), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=True),
        sa.Column("polled_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.UniqueConstraint("tag", name="uq_provider_batches_tag"),
    )
    op.create_index("ix_provider_batches_job_state", "provider_batches", ["job_id", "state"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("batch_ref", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("provider_batch_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("provider_batch_id")
        batch.drop_column("batch_ref")
    op.drop_index("ix_provider_batches_job_state", "provider_batches")
    op.drop_table("provider_batches")
