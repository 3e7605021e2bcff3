"""response_cache table (validated answers by request digest) and attempts.saved_picos (cache attempts)

Revision ID: 0005
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("scope", sa.String(120), nullable=True),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("invalid_error", sa.Text(), nullable=True),
        sa.Column("usage", sa.Text(), nullable=True),
        sa.Column("cost_picos", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("attempt_id", sa.BigInteger(), nullable=True),
        sa.Column("claimed_by", sa.String(120), nullable=True),
        sa.Column("claim_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_response_cache_created", "response_cache", ["created_at"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("saved_picos", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("saved_picos")
    op.drop_index("ix_response_cache_created", table_name="response_cache")
    op.drop_table("response_cache")
