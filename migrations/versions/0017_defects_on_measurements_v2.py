"""The defect detectors read the technical scorer's version-2 measurements: analyse the low scorers again.

Noise is now read on the calm half of the pixels (texture is no longer taken for grain), compression also by the
estimated JPEG quality, and low resolution counts the pixel blocks of a nearest-neighbour enlargement as one pixel
(models/measurements.py). Findings written before would mix two definitions in the defect shares; clearing
`analysed_at` has the defects flow analyse every low scorer again, replacing its rows. Downgrade cannot tell which
assets were analysed before, so they stay due.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 09:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE assets SET analysed_at = NULL WHERE analysed_at IS NOT NULL")


def downgrade() -> None:
    """Nothing to restore: the findings are replaced by the next defects run either way."""
