"""Migrations up and down on a real Postgres+pgvector, and the embedded server's lifecycle."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.core import database
from aesq.core.config import Settings
from aesq.core.provenance import GeneratorRef
from aesq.core.tables import Base
from aesq.core.writes import upsert_generators, write_embeddings
from tests.helpers import end_other_sessions, free_port

EXPECTED_TABLES = {
    "generators",
    "generator_renames",
    "assets",
    "scores",
    "embeddings",
    "defects",
    "version_stats",
    "version_daily_stats",
    "reports",
    "stale_versions",
    "ingest_queue",
    "source_cursors",
    "work_log",
    "critiques",
}
EXPECTED_VIEWS = {
    "latest_scores", "asset_overview", "asset_scores", "version_summary", "version_daily",
    "asset_defects", "version_defect_shares", "asset_critiques",
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
        indexes = connection.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = 'embeddings'")
        ).scalars()
        assert any("ivfflat" in index and "halfvec_cosine_ops" in index for index in indexes)
        column = connection.execute(
            sa.text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'embeddings'::regclass AND attname = 'vector'"
            )
        ).scalar_one()
        assert column == "halfvec"

    database.downgrade("base", settings=settings)
    assert database.current_revision(settings) is None
    assert _relations(empty_database_url) == (set(), set())

    database.upgrade(settings=settings)  # and back up again on the same database
    assert _relations(empty_database_url) == (EXPECTED_TABLES, EXPECTED_VIEWS)


def test_migrations_match_the_tables_module(empty_database_url):
    """Autogenerate finds nothing to add: the schema lives in aesq.core.tables and the migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    database.upgrade(settings=Settings(database_url=empty_database_url))
    with database.engine(empty_database_url).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migration_0008_moves_critiques_out_of_defects_and_back(empty_database_url):
    """Existing critiques keep their words through the move to their own table and through the downgrade."""
    settings = Settings(database_url=empty_database_url)
    database.upgrade("0007", settings=settings)
    detail = '{"critic": "ernie-aes", "score": 12.5, "aspects": {"Overall Gestalt": "flat", "Composition": "ça va"}}'
    with database.engine(empty_database_url).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO assets (id, storage, bucket, key, sha256, size_bytes, source_kind) OVERRIDING SYSTEM VALUE"
                " VALUES (1, 's3', 'b', 'k', 'aa', 1, 'generated')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO defects (asset_id, category, severity, detail) VALUES"
                " (1, 'critique', 0.875, :detail), (1, 'blur', 0.4, NULL)"
            ),
            {"detail": detail},
        )
    database.upgrade("0008", settings=settings)
    with database.engine(empty_database_url).connect() as connection:
        assert connection.execute(sa.text("SELECT category FROM defects")).scalars().all() == ["blur"]
        columns = "asset_id, critic, critic_score, aspects"
        moved = connection.execute(sa.text(f"SELECT {columns} FROM critiques")).one()
        viewed = connection.execute(sa.text(f"SELECT {columns} FROM asset_critiques")).one()
    assert tuple(moved) == tuple(viewed) == (1, "ernie-aes", 12.5, json.loads(detail)["aspects"])
    assert list(moved.aspects) == ["Overall Gestalt", "Composition"]  # in the order asked

    database.downgrade("0007", settings=settings)
    with database.engine(empty_database_url).connect() as connection:
        rows = connection.execute(sa.text("SELECT category, severity, detail FROM defects ORDER BY category")).all()
    assert [(category, severity) for category, severity, _ in rows] == [("blur", 0.4), ("critique", 0.875)]
    assert json.loads(rows[1].detail) == json.loads(detail)
    assert list(json.loads(rows[1].detail)["aspects"]) == ["Overall Gestalt", "Composition"]


@pytest.mark.parametrize(
    ("before", "after"),
    [("0009", "0010"), ("0016", "0017")],
    ids=["detectors on shared measurements", "technical version-2 measurements"],
)
def test_a_detector_change_has_every_low_scorer_analysed_again(empty_database_url, before, after):
    """Findings of the detectors before their measurements changed are redone, not mixed in with new ones."""
    settings = Settings(database_url=empty_database_url)
    database.upgrade(before, settings=settings)
    with database.engine(empty_database_url).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, analysed_at) VALUES"
                " ('s3', 'b', 'analysed', 'aa', 1, 'generated', now()), ('s3', 'b', 'not', 'bb', 1, 'generated', NULL)"
            )
        )
    database.upgrade(after, settings=settings)
    with database.engine(empty_database_url).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM assets WHERE analysed_at IS NULL")).scalar() == 2
    database.downgrade(before, settings=settings)


def test_non_postgres_url_is_refused():
    with pytest.raises(database.DatabaseError, match="PostgreSQL through psycopg"):
        database.engine("sqlite:///x.db")


def test_a_server_that_is_not_there_is_named_without_the_password():
    port = free_port()
    settings = Settings(database_url=f"postgresql://aesq:hunter2@127.0.0.1:{port}/aesq")
    with pytest.raises(database.DatabaseUnreachable) as raised, database.connect(settings):
        pass
    message = str(raised.value)
    assert message.startswith(
        f"cannot reach the database at 127.0.0.1:{port} (AESQ_DATABASE_URL): is Postgres running?"
    )
    assert "Connection refused" in message and "hunter2" not in message


def test_a_server_that_never_answers_is_given_up_on_within_seconds():
    """A host that takes the connection but never speaks (a hung server, a firewall's black hole) would make
    psycopg wait forever; the connect timeout ends it."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever answers
        settings = Settings(database_url=f"postgresql://aesq@127.0.0.1:{silent.getsockname()[1]}/aesq")
        started = time.monotonic()
        with pytest.raises(database.DatabaseUnreachable, match="timeout expired"), database.connect(settings):
            pass
    assert time.monotonic() - started < 2 * database.CONNECT_TIMEOUT_SECONDS


def test_the_url_s_own_connect_timeout_wins():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://aesq@127.0.0.1:{silent.getsockname()[1]}/aesq?connect_timeout=2"
        started = time.monotonic()
        with pytest.raises(database.DatabaseUnreachable), database.connect(Settings(database_url=url)):
            pass
    assert time.monotonic() - started < database.CONNECT_TIMEOUT_SECONDS


def test_an_embedded_server_that_cannot_start_names_its_folder_and_the_alternative(tmp_path):
    (tmp_path / "a-file").write_text("")
    settings = Settings(database_url=None, data_dir=tmp_path / "a-file" / "data")
    with pytest.raises(database.DatabaseError) as raised:
        database.start_embedded(settings)
    assert str(raised.value).startswith(
        f"cannot start the embedded Postgres in {settings.data_dir / 'postgres'} (AESQ_DATA_DIR): "
    )
    assert str(raised.value).endswith("; or set AESQ_DATABASE_URL to use a Postgres of your own")


def test_embedded_server_is_shared_between_processes_and_stopped_by_command(tmp_path):
    settings = Settings(database_url=None, data_dir=tmp_path / "data")
    url = database.start_embedded(settings)
    try:
        with database.engine(url).connect() as connection:
            connection.execute(sa.text("CREATE TABLE shared_marker (x int)"))
            connection.commit()
        # A second aesq process joins the same server instead of starting another one.
        code = (
            "from aesq.core.config import Settings; from aesq.core import database; import sqlalchemy as sa, pathlib;"
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


def test_a_cluster_aesq_creates_gets_a_quarter_of_memory_for_shared_buffers(tmp_path):
    """Set before the first start (no restart under other processes), and kept across restarts."""
    settings = Settings(database_url=None, data_dir=tmp_path / "data")
    assert database.shared_buffers_mb() > 128  # this machine has more than 512 MB
    for _ in range(2):
        url = database.start_embedded(settings)
        try:
            with database.engine(url).connect() as connection:
                buffers = connection.execute(sa.text("SHOW shared_buffers")).scalar_one()
        finally:
            database.stop_embedded(settings)
        assert buffers == f"{database.shared_buffers_mb()}MB"


def test_the_pool_is_sized_by_the_setting_with_as_many_again_at_peaks(migrated_database_url):
    pooled = database.get_engine(Settings(database_url=migrated_database_url, database_pool_size=3))
    assert (pooled.pool.size(), pooled.pool._max_overflow) == (3, 3)
    assert pooled is database.engine(migrated_database_url, 3)  # one engine per URL and size, however asked for
    default = database.get_engine(Settings(database_url=migrated_database_url))
    assert default is database.engine(migrated_database_url) and default.pool.size() == 10


def _own_engine_url(url: str, name: str) -> str:
    """The URL with an application name: an engine of one test alone, not the cached one other tests share."""
    return sa.make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


def test_a_full_pool_says_which_setting_sizes_it(migrated_database_url, monkeypatch):
    monkeypatch.setattr(database, "POOL_TIMEOUT_SECONDS", 0.2)
    url = _own_engine_url(migrated_database_url, "aesq-pool-test")
    pooled = database.engine(url, 1)
    try:
        held = [pooled.connect(), pooled.connect()]  # the one pooled and the one more at peaks
        with pytest.raises(sa.exc.TimeoutError, match=r"all 2 database connections .*AESQ_DATABASE_POOL_SIZE=1"):
            pooled.connect()
        held.pop().close()
        with pooled.connect() as connection:  # a returned connection serves the next thread
            assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
        held.pop().close()
    finally:
        pooled.dispose()


def test_pooled_connections_the_server_ended_are_replaced(migrated_database_url):
    url = _own_engine_url(migrated_database_url, "aesq-reconnect-test")
    pooled = database.engine(url, 2)
    try:
        first, second = pooled.connect(), pooled.connect()
        pids = {c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() for c in (first, second)}
        first.close()
        second.close()  # both idle in the pool now
        assert end_other_sessions(migrated_database_url) >= 2
        with pooled.connect() as connection:  # pinged, found dead, replaced
            assert connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() not in pids
            assert connection.execute(sa.text("SELECT '[1,2]'::vector")).scalar_one().to_list() == [
                1,
                2,
            ]  # vector types registered anew

        busy = pooled.connect()
        busy.execute(sa.text("SELECT 1"))  # in a transaction when its session is ended
        end_other_sessions(migrated_database_url)
        with pytest.raises(sa.exc.OperationalError):
            busy.execute(sa.text("SELECT 1"))
        busy.close()
        with pooled.connect() as connection:  # the broken one was discarded, not returned to the pool
            assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        pooled.dispose()


def test_migration_0014_renames_generators_whose_name_holds_the_separator(empty_database_url):
    """`col:x` version `v` and `col` version `x:v` both read `col:x:v`: the first is renamed `col/x` (or, that being
    taken, `col/x/renamed`), keeping its assets and metadata; downgrading gives back the names it changed and only
    those, whatever a generator's metadata says (ingest writes it from sidecars)."""
    settings = Settings(database_url=empty_database_url)
    database.upgrade("0013", settings=settings)
    with database.engine(empty_database_url).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO generators (name, version, metadata) VALUES"
                " ('col:x', 'v', '{\"aesq_renamed_from\": \"forged\"}'), ('col', 'x:v', '{}'),"
                " ('col/x', 'w', '{}'), ('col:x', 'w', '[1, 2]'), ('a:b:c', '1', '\"a note\"'),"
                " ('victim', 'v', '{\"aesq_renamed_from\": \"col:x\"}')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, generator_id)"
                " SELECT 's3', 'b', 'k', 'aa', 1, 'generated', id FROM generators WHERE name = 'col:x' AND version = 'v'"
            )
        )

    def generators() -> list[tuple]:
        with database.engine(empty_database_url).connect() as connection:
            query = "SELECT id, name, version, metadata FROM generators ORDER BY id"
            return [tuple(row) for row in connection.execute(sa.text(query))]

    before = generators()
    database.upgrade("0014", settings=settings)
    assert [(name, version, metadata) for _, name, version, metadata in generators()] == [
        ("col/x", "v", {"aesq_renamed_from": "forged"}),
        ("col", "x:v", {}),
        ("col/x", "w", {}),
        ("col/x/renamed", "w", [1, 2]),
        ("a/b/c", "1", "a note"),
        ("victim", "v", {"aesq_renamed_from": "col:x"}),
    ]
    with database.engine(empty_database_url).begin() as connection:
        kept = connection.execute(
            sa.text("SELECT g.name || ':' || g.version FROM assets a JOIN generators g ON g.id = a.generator_id")
        ).scalar_one()
        # a sidecar's generator object read after the upgrade, claiming a rename for an existing and a new generator
        forged = {"aesq_renamed_from": "a:b:c"}
        upsert_generators(
            connection,
            [
                GeneratorRef(name="col", version="x:v", metadata=forged),
                GeneratorRef(name="new", version="1", metadata=forged),
            ],
        )
    assert kept == "col/x:v"
    database.downgrade("0013", settings=settings)
    after = generators()
    assert after[:-1] == [
        (generator_id, name, version, forged if (name, version) == ("col", "x:v") else metadata)
        for generator_id, name, version, metadata in before
    ]
    assert after[-1][1:] == ("new", "1", forged)


def test_migration_0015_queues_every_version_for_its_intervals_to_be_recomputed(empty_database_url):
    """Intervals stored by the full bootstrap above 2,000 scores are rewritten by the next aggregate."""
    settings = Settings(database_url=empty_database_url)
    database.upgrade("0014", settings=settings)
    with database.engine(empty_database_url).begin() as connection:
        connection.execute(sa.text("INSERT INTO generators (name, version) VALUES ('gen', 'v1'), ('gen', 'v2')"))
        connection.execute(sa.text("DELETE FROM stale_versions"))  # as after an aggregate
    database.upgrade("head", settings=settings)
    with database.engine(empty_database_url).connect() as connection:
        queued = connection.execute(sa.text("SELECT DISTINCT generator_id FROM stale_versions")).scalars().all()
        generators = connection.execute(sa.text("SELECT id FROM generators")).scalars().all()
    assert sorted(queued) == sorted(generators) and len(generators) == 2
    database.downgrade("0014", settings=settings)


def test_migration_0016_keeps_every_vector_and_moves_the_index_both_ways(empty_database_url):
    """HNSW indexes become IVFFlat ones trained for the rows present, and back; every vector stays as it was."""
    settings = Settings(database_url=empty_database_url)
    database.upgrade("0015", settings=settings)
    engine = database.engine(empty_database_url)
    rows = 12_000  # enough for the upgrade to train 12 lists
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, status)"
                " SELECT 's3', 'b', 'k' || n, 'sha' || n, 1, 'crawled', 'scored' FROM generate_series(1, :n) n"
            ),
            {"n": rows},
        )
        ids = connection.execute(sa.text("SELECT id FROM assets ORDER BY id")).scalars().all()
        vectors = np.random.default_rng(16).standard_normal((rows, 1280)).astype(np.float32)
        write_embeddings(connection, "efficientnet-lite0", ids, vectors)
        write_embeddings(connection, "clip-vit-l-14", ids[:10], vectors[:10, :768])

    def stored() -> tuple[int, str]:
        with engine.connect() as connection:
            return connection.execute(
                sa.text(
                    "SELECT count(*), md5(string_agg(vector::text, ',' ORDER BY asset_id, embedder)) FROM embeddings"
                )
            ).one()

    def index_methods() -> dict[str, str]:
        with engine.connect() as connection:
            return dict(
                connection.execute(
                    sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'embeddings'")
                ).all()
            )

    before = stored()
    assert before[0] == rows + 10
    database.upgrade("0016", settings=settings)
    assert stored() == before
    indexes = index_methods()
    assert "USING ivfflat" in indexes["ix_embeddings_ivf_efficientnet_lite0"]
    assert "lists='12'" in indexes["ix_embeddings_ivf_efficientnet_lite0"]
    assert "lists='1'" in indexes["ix_embeddings_ivf_clip_vit_l_14"]
    assert not any("hnsw" in definition for definition in indexes.values())
    database.downgrade("0015", settings=settings)
    assert stored() == before
    indexes = index_methods()
    assert "USING hnsw" in indexes["ix_embeddings_hnsw_efficientnet_lite0"]
    assert "USING hnsw" in indexes["ix_embeddings_hnsw_clip_vit_l_14"]
    assert not any("ivfflat" in definition for definition in indexes.values())


def test_threads_starting_a_new_embedded_cluster_at_once_all_get_it(tmp_path):
    """A flow's task threads start the embedded server together: each gets its URL, none an error."""
    settings = Settings(database_url=None, data_dir=tmp_path / "data")
    with ThreadPoolExecutor(8) as pool:
        urls = list(pool.map(lambda _: database.start_embedded(settings), range(8)))
    try:
        assert len(set(urls)) == 1
    finally:
        database.stop_embedded(settings)
