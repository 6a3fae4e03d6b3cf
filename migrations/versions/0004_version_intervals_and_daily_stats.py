"""Version statistics gain std and a bootstrap interval of the mean; per-day figures for trends.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("version_stats", sa.Column("mean_low", sa.Double(), nullable=True))
    op.add_column("version_stats", sa.Column("mean_high", sa.Double(), nullable=True))
    op.add_column("version_stats", sa.Column("std", sa.Double(), nullable=True))
    op.create_table(
        "version_daily_stats",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("generator_id", sa.Integer(), nullable=False),
        sa.Column("scorer", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("mean", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generator_id"],
            ["generators.id"],
            name=op.f("fk_version_daily_stats_generator_id_generators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_version_daily_stats")),
        sa.UniqueConstraint(
            "generator_id", "scorer", "day", name=op.f("uq_version_daily_stats_generator_id_scorer_day")
        ),
    )


def downgrade() -> None:
    op.drop_table("version_daily_stats")
    op.drop_column("version_stats", "std")
    op.drop_column("version_stats", "mean_high")
    op.drop_column("version_stats", "mean_low")
