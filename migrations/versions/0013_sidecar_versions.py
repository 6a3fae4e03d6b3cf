"""The sidecar each asset was ingested with (key and ETag), so a sidecar fixed, added or removed re-ingests
its image's provenance without the image's bytes changing.

Assets ingested before this get the sidecar ETag "(not recorded)" (with no sidecar key; ingest never writes
it): the next full listing takes the sidecar it lists as the one they were ingested with
(`aesq.core.discovery.UNRECORDED`) where the row shows it was ingested with provenance or none is listed, and
re-ingests the rest (failed assets, crawled ones with a sidecar listed), so most are not downloaded again and
a sidecar uploaded after its image is still read. The column gets the value as its default when added (no
table rewrite), then loses the default.

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

UNRECORDED = "(not recorded)"  # aesq.core.discovery.UNRECORDED, as it was when this migration was written


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
            server_default=UNRECORDED,
            comment="that sidecar's ETag: a listing that shows another re-ingests the object's provenance",
        ),
    )
    op.alter_column("assets", "sidecar_etag", server_default=None)


def downgrade() -> None:
    op.drop_column("assets", "sidecar_etag")
    op.drop_column("assets", "sidecar_key")
