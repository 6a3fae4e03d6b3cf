"""Claimed work for many workers: a queue of objects to ingest, scoring leases, listing cursors, a work log.

- `ingest_queue`: objects found new or changed, claimed in batches (`FOR UPDATE SKIP LOCKED`) with a
  lease, removed by the transaction that ingests them;
- `assets.lease_owner` / `lease_until`: the scoring claim on an asset; a lapsed lease frees it;
- `source_cursors`: where the last listing of an ordered source ended (polls list only what follows);
- `work_log`: object reads and model runs per batch, so duplicated work can be measured.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "assets",
        sa.Column(
            "lease_owner", sa.Text(), nullable=True, comment="the worker scoring this asset now (aesq/claims.py)"
        ),
    )
    op.add_column(
        "assets",
        sa.Column(
            "lease_until",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="the scoring claim lapses then, and any worker may take the asset",
        ),
    )
    op.create_index("ix_assets_pending", "assets", ["id"], unique=False, postgresql_where=sa.text("status = 'pending'"))
    op.create_index(
        "ix_assets_lease_until",
        "assets",
        ["lease_until"],
        unique=False,
        postgresql_where=sa.text("lease_until IS NOT NULL"),
    )
    op.create_table(
        "ingest_queue",
        sa.Column("storage", sa.Text(), nullable=False),
        sa.Column("bucket", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=True, comment="as listed; None when a notification queued it"),
        sa.Column("sidecar", sa.Text(), nullable=True, comment="the provenance sidecar's key, when one was listed"),
        sa.Column(
            "listed",
            sa.Boolean(),
            server_default=sa.text("true"),
            nullable=False,
            comment="false: queued by a notification, sidecar not looked for yet",
        ),
        sa.Column(
            "changed",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
            comment="a known key with new bytes: claimed first and together",
        ),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False, comment="reads that failed so far"),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("storage", "bucket", "key", name=op.f("pk_ingest_queue")),
    )
    op.create_index(
        "ix_ingest_queue_order", "ingest_queue", ["storage", "bucket", sa.text("changed DESC"), "key"], unique=False
    )
    op.create_table(
        "source_cursors",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("after_key", sa.Text(), nullable=True, comment="the greatest key listed so far"),
        sa.Column("full_listing_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_source_cursors")),
    )
    op.create_table(
        "work_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False, comment="'fetch' or 'model:<name>'"),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_log")),
    )


def downgrade() -> None:
    op.drop_table("work_log")
    op.drop_table("source_cursors")
    op.drop_index("ix_ingest_queue_order", table_name="ingest_queue")
    op.drop_table("ingest_queue")
    op.drop_index("ix_assets_lease_until", table_name="assets")
    op.drop_index("ix_assets_pending", table_name="assets")
    op.drop_column("assets", "lease_until")
    op.drop_column("assets", "lease_owner")
