"""Migrations up and down on a real Postgres+pgvector, and the embedded server's lifecycle."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from aesq import database
from aesq.config import Settings
from aesq.tables import Base

EXPECTED_TABLES = {
    "generators", "assets", "scores", "embeddings", "defects", "version_stats", "version_daily_stats", "reports",
    "stale_versions", "ingest_queue", "source_cursors", "work_log",
}
EXPECTED_VIEWS = {
    "latest_scores", "generator_stats", "asset_overview", "asset_scores", "version_summary", "version_daily",
    "asset_defects", "version_defect_shares",
}  # fmt: skip


def _relations(url: str) -> tuple[set[str], set[str]]:
    """Tables and views in the public schema."""
    inspector = sa.inspect(database.engine(url))
    return set(inspector.get_table_names()) - {"alembic_version"}, set(inspector.get_view_names())


def test_upgrade_creates_schema_and_downgrade_removes_it(empty_database_url):
    settings = Settings(database_url=empty_database_url)
    database.upgrade(settings=settings)
    assert database.current_revision(settings) is not None
    assert _relations(empty_database_url) == (EXPECTED_TABLES, EXPECTED_VIEWS)
    with database.engine(empty_database_url).connect() as connection:
        indexes = connection.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings'")).scalars()
        assert any("hnsw" in index and "halfvec_cosine_ops" in index for index in indexes)
        column = connection.execute(
            sa.text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = 'embeddings'::regclass AND attname = 'vector'")
        ).scalar_one()
        assert column == "halfvec"

    database.downgrade("base", settings=settings)
    assert database.current_revision(settings) is None
    assert _relations(empty_database_url) == (set(), set())

    database.upgrade(settings=settings)  # and back up again on the same database
    assert _relations(empty_database_url) == (EXPECTED_TABLES, EXPECTED_VIEWS)


def test_migrations_match_the_tables_module(empty_database_url):
    """Autogenerate finds nothing to add: the schema lives in aesq.tables and the migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    database.upgrade(settings=Settings(database_url=empty_database_url))
    with database.engine(empty_database_url).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_non_postgres_url_is_refused():
    with pytest.raises(database.DatabaseError, match="PostgreSQL through psycopg"):
        database.engine("sqlite:///x.db")


def test_embedded_server_is_shared_between_processes_and_stopped_by_command(tmp_path):
    settings = Settings(database_url=None, data_dir=tmp_path / "data")
    url = database.start_embedded(settings)
    try:
        with database.engine(url).connect() as connection:
            connection.execute(sa.text("CREATE TABLE shared_marker (x int)"))
            connection.commit()
        # A second aesq process joins the same server instead of starting another one.
        code = (
            "from aesq.config import Settings; from aesq import database; import sqlalchemy as sa, pathlib;"
            f"url = database.start_embedded(Settings(database_url=None, data_dir=pathlib.Path({str(tmp_path / 'data')!r})));"
            "print(url);"
            "c = database.engine(url).connect(); print(c.execute(sa.text('SELECT count(*) FROM shared_marker')).scalar())"
        )
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        assert output == [url, "0"]
    finally:
        assert database.stop_embedded(settings) is True
    assert database.stop_embedded(settings) is False
    with pytest.raises(sa.exc.OperationalError):
        sa.create_engine(url).connect()
