"""Defect analysis (one row per asset and category, analysed_at) and the reports table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 21:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("assets", sa.Column("analysed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_unique_constraint(op.f("uq_defects_asset_id_category"), "defects", ["asset_id", "category"])
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column(
            "summary", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )


def downgrade() -> None:
    op.drop_table("reports")
    op.drop_constraint(op.f("uq_defects_asset_id_category"), "defects", type_="unique")
    op.drop_column("assets", "analysed_at")
