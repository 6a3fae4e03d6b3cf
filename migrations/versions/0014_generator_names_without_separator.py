"""Generator names without ':', so every `name:version` label names one version.

Ingest refuses a name containing ':' since this revision (aesq/core/provenance.py); a generator stored before
with one (`col:x` version `v`) would share its label `col:x:v` with `col` version `x:v`. Each such name has
its colons replaced by '/' (`col/x`), followed by '/renamed' as often as needed to stay unique; the name it had
is kept in `generator_renames`, which only this migration writes and the downgrade reads back and drops
(a generator's metadata is written from sidecars, so nothing there is trusted). Its assets, scores and
statistics stay with it (they reference the generator's id); an image of it whose provenance still names
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


def upgrade() -> None:
    op.create_table(
        "generator_renames",
        sa.Column("generator_id", sa.Integer(), nullable=False),
        sa.Column("name_before", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generator_id"],
            ["generators.id"],
            name=op.f("fk_generator_renames_generator_id_generators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("generator_id", name=op.f("pk_generator_renames")),
    )
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
            sa.text("INSERT INTO generator_renames (generator_id, name_before) VALUES (:id, :name)"),
            {"id": generator_id, "name": name},
        )
        connection.execute(
            sa.text("UPDATE generators SET name = :renamed WHERE id = :id"), {"renamed": renamed, "id": generator_id}
        )


def downgrade() -> None:
    op.execute(
        "UPDATE generators SET name = generator_renames.name_before"
        " FROM generator_renames WHERE generators.id = generator_renames.generator_id"
    )
    op.drop_table("generator_renames")
