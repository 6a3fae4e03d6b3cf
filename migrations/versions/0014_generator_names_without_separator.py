"""Generator names without ':', so every `name:version` label names one version.

Ingest refuses a name containing ':' since this revision (aesq/core/provenance.py); a generator stored before
with one (`col:x` version `v`) would share its label `col:x:v` with `col` version `x:v`. Each such name has
its colons replaced by '/' (`col/x`), followed by '/renamed' as often as needed to stay unique; the name it had
is kept in the generator's metadata under `aesq_renamed_from`, which the downgrade restores. Its assets, scores
and statistics stay with it (they reference the generator's id); an image of it whose provenance still names
`col:x` fails with the reason when it is next ingested, like any other.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 22:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMED_FROM = "aesq_renamed_from"


def upgrade() -> None:
    connection = op.get_bind()
    taken = {tuple(row) for row in connection.execute(sa.text("SELECT name, version FROM generators"))}
    colliding = connection.execute(
        sa.text("SELECT id, name, version FROM generators WHERE strpos(name, ':') > 0 ORDER BY id")
    ).all()
    for generator_id, name, version in colliding:
        renamed = name.replace(":", "/")
        while (renamed, version) in taken:
            renamed += "/renamed"
        taken.add((renamed, version))
        connection.execute(
            sa.text(
                "UPDATE generators SET name = :renamed,"
                " metadata = metadata || jsonb_build_object(CAST(:key AS text), name) WHERE id = :id"
            ),
            {"renamed": renamed, "key": RENAMED_FROM, "id": generator_id},
        )


def downgrade() -> None:
    op.execute(
        sa.text(
            f"UPDATE generators SET name = metadata->>'{RENAMED_FROM}', metadata = metadata - '{RENAMED_FROM}'"
            f" WHERE metadata ? '{RENAMED_FROM}'"
        )
    )
