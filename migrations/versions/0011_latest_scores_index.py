"""An index in the `latest_scores` view's order under one scorer, so "latest score" has one definition
(the view) that is as fast as the hand-written queries it replaces: the view's DISTINCT ON reads each
scorer's rows in order (index-only, `value` included) instead of sorting them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 18:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_scores_latest ON scores (scorer, asset_id, created_at DESC, id DESC) INCLUDE (value)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_scores_latest")
