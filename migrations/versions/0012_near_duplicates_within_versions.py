"""Near-duplicates are found within a generator version or against crawled data, never across versions:
analyse again every asset holding a `near_duplicate` finding.

Findings written before the rule changed may name an asset of another version (paired generations of the
same prompt and seed); clearing `analysed_at` has the defects flow analyse those assets again, replacing
their rows. Downgrade changes nothing: it cannot tell which assets were analysed before, so they stay due.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 19:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE assets SET analysed_at = NULL WHERE id IN (SELECT asset_id FROM defects WHERE category = 'near_duplicate')"
    )


def downgrade() -> None:
    pass
