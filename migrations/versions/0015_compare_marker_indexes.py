"""Indexes that make a comparison's change markers index probes, and every version's statistics recomputed once.

`aesq.analysis.versions.comparison_key` runs on every compare request, kept or not: it reads the latest
`updated_at` of each version's assets and the queue rows of each version. Without these indexes it read every asset
row of both versions (an index scan plus a heap fetch each) and scanned the whole queue. `(generator_id,
updated_at)` answers the first from the index's last entry and also serves every lookup by `generator_id`, so it
replaces `ix_assets_generator_id`; `(generator_id, id)` answers the count and the latest id of a version's queue.

Intervals stored for versions above 2,000 scores were computed by the full percentile bootstrap before the
m-out-of-n bootstrap (aesq/analysis/statistics.py) replaced it there; every version is queued, as migration 0006
did, so the next aggregate rewrites them with the current method and each stored figure is again what its rows give.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 23:15:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_assets_generator_id_updated_at", "assets", ["generator_id", "updated_at"])
    op.drop_index("ix_assets_generator_id", table_name="assets")
    op.create_index("ix_stale_versions_generator_id_id", "stale_versions", ["generator_id", "id"])
    op.execute("INSERT INTO stale_versions (generator_id) SELECT id FROM generators")


def downgrade() -> None:
    op.drop_index("ix_stale_versions_generator_id_id", table_name="stale_versions")
    op.create_index("ix_assets_generator_id", "assets", ["generator_id"])
    op.drop_index("ix_assets_generator_id_updated_at", table_name="assets")
