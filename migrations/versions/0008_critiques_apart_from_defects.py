"""Critiques are not defects: a VLM critic's answers move from `defects` (category `critique`) to their own table.

Until now a critique was a `defects` row, so it counted in defect shares, filter options and export
exclusions. Upgrade moves every such row into `critiques` (critic, its score and the answers per aspect,
as they were written) and adds the stable view `asset_critiques`; downgrade moves them back.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The category critiques had in `defects` before this revision.
CRITIQUE_CATEGORY = "critique"

ASSET_CRITIQUES = """
    SELECT c.asset_id, g.name AS generator, g.version, c.critic, c.critic_score, c.aspects, c.created_at
    FROM critiques c
    JOIN assets a ON a.id = c.asset_id
    LEFT JOIN generators g ON g.id = a.generator_id
"""


def upgrade() -> None:
    op.create_table(
        "critiques",
        sa.Column("asset_id", sa.BigInteger(), nullable=False),
        sa.Column("critic", sa.Text(), nullable=False, comment="the VLM scorer that wrote it"),
        sa.Column(
            "critic_score", sa.Double(), nullable=False, comment="the critic's own latest score of the asset then"
        ),
        sa.Column(
            "aspects",
            postgresql.JSON(astext_type=sa.Text()),
            nullable=False,
            comment="aspect → answer; JSON, not JSONB, so the aspects keep the order they were asked in",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_critiques_asset_id_assets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("asset_id", name=op.f("pk_critiques")),
    )
    op.execute(
        sa.text(
            """
            INSERT INTO critiques (asset_id, critic, critic_score, aspects, created_at)
            SELECT asset_id, detail::json ->> 'critic', (detail::json ->> 'score')::float8, detail::json -> 'aspects',
                   created_at
            FROM defects WHERE category = :category
            """
        ).bindparams(category=CRITIQUE_CATEGORY)
    )
    op.execute(sa.text("DELETE FROM defects WHERE category = :category").bindparams(category=CRITIQUE_CATEGORY))
    op.execute(f"CREATE VIEW asset_critiques AS {ASSET_CRITIQUES}")


def downgrade() -> None:
    op.execute("DROP VIEW asset_critiques")
    # As the critique writer stored them: severity 1 − the critic's score / 100, detail the JSON text.
    op.execute(
        sa.text(
            """
            INSERT INTO defects (asset_id, category, severity, detail, created_at)
            SELECT asset_id, :category, round(least(1, greatest(0, 1 - critic_score / 100))::numeric, 4),
                   json_build_object('critic', critic, 'score', critic_score, 'aspects', aspects)::text, created_at
            FROM critiques
            """
        ).bindparams(category=CRITIQUE_CATEGORY)
    )
    op.drop_table("critiques")
