"""Defect analysis measures with the technical scorer's measurements now: analyse the low scorers again.

The detectors' figures changed (models/measurements.py), so findings written before would mix two
definitions in the defect shares; clearing `analysed_at` has the defects flow analyse every low scorer
again, replacing its rows. Also brings the lease column's comment to the module's new path.
Downgrade restores the comment; it cannot tell which assets were analysed before, so they stay due.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _lease_owner_comment(path: str) -> None:
    op.alter_column(
        "assets", "lease_owner", existing_type=sa.Text(), comment=f"the worker scoring this asset now ({path})"
    )


def upgrade() -> None:
    op.execute("UPDATE assets SET analysed_at = NULL WHERE analysed_at IS NOT NULL")
    _lease_owner_comment("aesq/core/claims.py")


def downgrade() -> None:
    _lease_owner_comment("aesq/claims.py")
