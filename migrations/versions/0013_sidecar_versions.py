"""The sidecar each asset was ingested with (key and ETag), so a sidecar fixed, added or removed re-ingests
its image's provenance without the image's bytes changing.

Assets ingested before this have no recorded sidecar: those that have one are re-ingested once by the next
listing (same bytes, so their scores stay; only provenance is read again).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 19:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "assets",
        sa.Column("sidecar_key", sa.Text(), nullable=True, comment="the provenance sidecar read at ingest, if any"),
    )
    op.add_column(
        "assets",
        sa.Column(
            "sidecar_etag",
            sa.Text(),
            nullable=True,
            comment="that sidecar's ETag: a listing that shows another re-ingests the object's provenance",
        ),
    )


def downgrade() -> None:
    op.drop_column("assets", "sidecar_etag")
    op.drop_column("assets", "sidecar_key")
