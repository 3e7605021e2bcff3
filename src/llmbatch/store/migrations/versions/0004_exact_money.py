"""exact money: every *_micros column becomes *_picos (x 10**6, so existing rows keep their value exactly);
attempts.overrun, attempts.finish_reason, attempts.served_model; jobs.stop_reason

Money moves from micro-dollars rounded up per attempt to exact pico-dollars (money.py). Rows written before
keep what they were charged (their rounded micro-dollars, now as picos); new attempts are exact.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCALE = 10**6  # picos per micro-dollar

# table -> money columns
MONEY = {
    "jobs": ("budget", "max_cost_per_task", "spent", "reserved"),
    "tasks": ("cost",),
    "attempts": ("reserved", "cost"),
    "budget_windows": ("cap", "spent", "reserved"),
}


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    # Plain ALTER TABLE statements (SQLite >= 3.25 renames and adds columns in place): batch mode would
    # rebuild the tables on SQLite, and dropping the old `jobs` would cascade-delete every task and attempt.
    for table, names in MONEY.items():
        present = _columns(table)
        todo = [n for n in names if f"{n}_micros" in present and f"{n}_picos" not in present]
        if not todo:
            continue  # already migrated
        for n in todo:
            op.execute(f"ALTER TABLE {table} RENAME COLUMN {n}_micros TO {n}_picos")
        op.execute(f"UPDATE {table} SET " + ", ".join(f"{n}_picos = {n}_picos * {SCALE}" for n in todo))
    present = _columns("attempts")
    if "overrun" not in present:
        op.add_column("attempts", sa.Column("overrun", sa.Boolean(), nullable=False, server_default=sa.false()))
    if "finish_reason" not in present:
        op.add_column("attempts", sa.Column("finish_reason", sa.String(40), nullable=True))
    if "served_model" not in present:
        op.add_column("attempts", sa.Column("served_model", sa.String(200), nullable=True))
    # Attempts settled above their reservation before this migration were overruns too.
    op.execute("UPDATE attempts SET overrun = (cost_picos > reserved_picos) WHERE settled")
    if "stop_reason" not in _columns("jobs"):
        op.add_column("jobs", sa.Column("stop_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    for table, column in (("jobs", "stop_reason"), ("attempts", "served_model"), ("attempts", "finish_reason"),
                          ("attempts", "overrun")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # SQLite >= 3.35
    for table, names in MONEY.items():
        # Back to micro-dollars, rounded up (the old rule), so no cost is understated.
        op.execute(f"UPDATE {table} SET " + ", ".join(
            f"{n}_picos = ({n}_picos + {SCALE - 1}) / {SCALE}" for n in names))
        for n in names:
            op.execute(f"ALTER TABLE {table} RENAME COLUMN {n}_picos TO {n}_micros")
