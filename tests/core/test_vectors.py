"""The vector index and search on the real Postgres + pgvector: neighbours as exact search finds them, filtered
searches that still return k rows, and rebuilds as rows grow."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from aesq.core import database, vectors
from aesq.core.config import ConfigurationError, Settings
from aesq.core.writes import write_embeddings
from tests.docs.test_sql import QUERIES, statements

EMBEDDER = "efficientnet-lite0"
ROWS = 12_000  # past FIRST_TRAINING_ROWS: the rebuild trains 18 lists


@pytest.fixture
def fresh_settings(empty_database_url: str) -> Settings:
    """A database of its own (rebuilt indexes would outlive the shared database's truncation), migrated."""
    settings = Settings(database_url=empty_database_url)
    database.upgrade(settings=settings)
    return settings


def clustered_vectors(rows: int, seed: int = 16) -> np.ndarray:
    """Unit vectors around 30 fixed centres, as images of the same prompts are; `seed` draws which and the noise."""
    centres = np.random.default_rng(0).standard_normal((30, 1280))
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(30, size=rows)] + 0.6 * rng.standard_normal((rows, 1280))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def add_assets(settings: Settings, vectors_: np.ndarray, generators: int = 10) -> list[int]:
    """Scored assets spread over `generators` versions (every tenth crawled), with the vectors as embeddings."""
    with database.get_engine(settings).begin() as connection:
        connection.execute(
            sa.text("INSERT INTO generators (name, version) SELECT 'gen', 'v' || n FROM generate_series(1, :n) n"),
            {"n": generators},
        )
        first = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM assets")).scalar_one()
        connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, generator_id, status)"
                " SELECT 's3', 'b', 'k' || n, 'sha' || n, 1,"
                "  CASE WHEN n % 10 = 0 THEN 'crawled' ELSE 'generated' END,"
                "  CASE WHEN n % 10 = 0 THEN NULL ELSE (SELECT min(id) FROM generators) + n % :g END, 'scored'"
                " FROM generate_series(:first + 1, :first + :n) n"
            ),
            {"n": len(vectors_), "first": first, "g": generators},
        )
        ids = connection.execute(sa.text("SELECT id FROM assets WHERE id > :first ORDER BY id"), {"first": first})
        ids = ids.scalars().all()
        write_embeddings(connection, EMBEDDER, ids, vectors_)
    return ids


def exact_nearest(stored: np.ndarray, ids: list[int], query: np.ndarray, k: int) -> list[int]:
    """The k closest ids by cosine distance, computed here (the stored half-precision values, in float64)."""
    data = stored.astype(np.float64)
    similarity = data @ query.astype(np.float64) / np.linalg.norm(data, axis=1) / np.linalg.norm(query)
    return [ids[i] for i in np.argsort(-similarity, kind="stable")[:k]]


def search(settings: Settings, query: np.ndarray, k: int, conditions=(), params=None) -> list[tuple[int, float]]:
    with database.get_engine(settings).begin() as connection:
        return vectors.nearest(connection, EMBEDDER, query.astype(np.float16), k, conditions, params)


def test_lists_grow_with_rows_half_again_as_many_as_pgvector_advises():
    rows = (0, 9_999, 10_000, 250_000, 1_000_000, 4_000_000)
    assert [vectors.lists_for(n) for n in rows] == [1, 1, 15, 375, 1_500, 3_000]
    assert [vectors.probes_for(n) for n in (1, 5, 12, 1_500, 3_000)] == [1, 5, 8, 8, 15]


def test_a_filter_keeping_fewer_rows_reads_more_lists():
    assert [vectors.probes_for(1_500, share) for share in (1.0, 0.5, 0.1, 0.045, 0.001, 0.0)] == [8, 9, 11, 13, 23, 32]
    assert vectors.probes_for(8, 0.01) == 8  # never more lists than the index has


def test_rebuild_trains_the_index_once_rows_call_for_twice_its_lists(fresh_settings):
    assert vectors.rebuild_grown_indexes(fresh_settings) == {}  # one list, and no rows to call for more
    data = clustered_vectors(ROWS)
    add_assets(fresh_settings, data)
    assert vectors.rebuild_grown_indexes(fresh_settings) == {EMBEDDER: 18}
    assert vectors.rebuild_grown_indexes(fresh_settings) == {}  # 18 lists' worth of rows: not grown since
    with database.get_engine(fresh_settings).connect() as connection:
        assert vectors.current_lists(connection, EMBEDDER) == 18
        names = connection.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings'"))
        assert "ix_embeddings_ivf_efficientnet_lite0_rebuild" not in names.scalars().all()


TRAINED_LISTS = 120  # a search reads 8 of them: 7 % of the rows, so recall depends on the index working


@pytest.fixture
def trained(fresh_settings) -> tuple[Settings, np.ndarray, list[int]]:
    """12,000 stored vectors under an index of TRAINED_LISTS lists: (settings, the vectors, their asset ids)."""
    data = clustered_vectors(ROWS)
    ids = add_assets(fresh_settings, data)
    with database.get_engine(fresh_settings).connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text(f"DROP INDEX {vectors.index_name(EMBEDDER)}"))
        connection.execute(sa.text(vectors.index_definition(EMBEDDER, TRAINED_LISTS)))
        connection.execute(sa.text("ANALYZE"))
    return fresh_settings, data, ids


def recall(hits: list[tuple[int, float]], expected: list[int]) -> float:
    return len({asset_id for asset_id, _ in hits} & set(expected)) / len(expected)


def test_neighbours_match_exact_search(trained):
    settings, data, ids = trained
    assert vectors.probes_for(TRAINED_LISTS) < TRAINED_LISTS / 10
    queries = clustered_vectors(20, seed=17)
    found = [search(settings, query, 10, ["a.status IN ('pending', 'scored')"]) for query in queries]
    assert np.mean([recall(hits, exact_nearest(data, ids, query, 10)) for hits, query in zip(found, queries)]) >= 0.95
    for hits, query in zip(found, queries):
        distances = [distance for _, distance in hits]
        assert distances == sorted(distances)  # the relaxed index order is re-sorted
        row = ids.index(hits[0][0])
        expected = 1 - float(data[row].astype(np.float64) @ query.astype(np.float64)) / (
            np.linalg.norm(data[row].astype(np.float64)) * np.linalg.norm(query.astype(np.float64))
        )
        assert distances[0] == pytest.approx(expected, abs=1e-3)


def test_below_the_first_training_rows_search_is_exact(fresh_settings):
    data = clustered_vectors(2_000)
    ids = add_assets(fresh_settings, data)
    for query in clustered_vectors(5, seed=18):
        assert [i for i, _ in search(fresh_settings, query, 10)] == exact_nearest(data, ids, query, 10)


@pytest.mark.parametrize(
    "condition",
    ["a.generator_id = (SELECT min(id) + 1 FROM generators)", "a.source_kind = 'crawled'"],
    ids=["one version", "crawled"],
)
def test_a_filtered_search_returns_the_filter_s_k_closest(trained, condition):
    """A filter keeping a tenth of the rows runs inside the index scan: k rows come back, the filter's closest."""
    settings, data, ids = trained
    with database.get_engine(settings).connect() as connection:
        kept = set(connection.execute(sa.text(f"SELECT a.id FROM assets a WHERE {condition}")).scalars().all())
    rows = [row for row, asset_id in enumerate(ids) if asset_id in kept]
    assert 0 < len(rows) < ROWS / 5
    recalls = []
    for query in clustered_vectors(10, seed=19):
        hits = search(settings, query, 10, [condition])
        assert len(hits) == 10 and {i for i, _ in hits} <= kept
        recalls.append(recall(hits, exact_nearest(data[rows], [ids[row] for row in rows], query, 10)))
    assert np.mean(recalls) >= 0.95


def test_a_rare_filter_still_returns_k_rows(trained):
    """12 rows of 12,000 pass: the lists a search reads first (18 of 120: the planner guesses such a filter keeps
    0.5 % of the rows) hold about 2 of them, so the index scan reads on."""
    settings, _, _ = trained
    rare = "a.id % 1000 = 7"
    for query in clustered_vectors(5, seed=20):
        hits = search(settings, query, 10, [rare])
        assert len(hits) == 10 and all(asset_id % 1000 == 7 for asset_id, _ in hits)
        with database.get_engine(settings).begin() as connection:
            connection.execute(sa.text(vectors.search_settings(vectors.search_probes(connection, EMBEDDER, [rare]))))
            connection.execute(sa.text("SET LOCAL ivfflat.iterative_scan = off"))
            one_pass = connection.execute(
                sa.text(vectors.nearest_query(EMBEDDER, [rare])), {"query": query, "limit": 10}
            ).all()
        assert len(one_pass) < 10  # what a search without the iterative scan would have returned


def test_searches_read_more_lists_the_fewer_rows_their_filter_keeps(trained):
    """The planner's estimate of the rows a filter keeps sets the lists read, parameters included; no filter, or
    one keeping every row, reads the unfiltered number."""
    settings, _, _ = trained
    with database.get_engine(settings).connect() as connection:
        version = connection.execute(sa.text("SELECT min(id) + 1 FROM generators")).scalar_one()
    searches = {
        "none": ([], {}),
        "live": (["a.status IN ('pending', 'scored')"], {}),
        "one version": (["a.generator_id = :g"], {"g": version}),
        "rare": (["a.id % 1000 = 7"], {}),
    }
    probes = {}
    for name, (conditions, params) in searches.items():
        with database.get_engine(settings).begin() as connection:
            vectors.nearest(connection, EMBEDDER, clustered_vectors(1)[0], 10, conditions, params)
            probes[name] = int(connection.execute(sa.text("SHOW ivfflat.probes")).scalar_one())
    base = vectors.probes_for(TRAINED_LISTS)
    assert probes["none"] == probes["live"] == base
    assert base < probes["one version"] < probes["rare"] <= vectors.MAX_FILTER_WIDENING * base


def test_a_filter_the_planner_proves_empty_finds_nothing(trained):
    """Its branch of the share estimate's plan is gone: the search reads on and returns no row, without an error."""
    settings, _, _ = trained
    assert search(settings, clustered_vectors(1)[0], 10, ["a.id = :a AND a.id <> :a"], {"a": 5}) == []
    assert search(settings, clustered_vectors(1)[0], 10, ["1 = 0"]) == []


def test_a_swap_cut_short_is_completed_and_searched_meanwhile(trained):
    """A rebuild stopped after dropping the old index, before renaming the new one: searches read the new one
    with its lists' probes, and the next rebuild puts it in place instead of training again."""
    settings, _, _ = trained
    with database.get_engine(settings).connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        name = vectors.index_name(EMBEDDER)
        connection.execute(sa.text(f"ALTER INDEX {name} RENAME TO {vectors.rebuild_name(EMBEDDER)}"))
        assert vectors.current_lists(connection, EMBEDDER) == TRAINED_LISTS
        assert vectors.rebuild_grown_indexes(settings) == {}  # 12,000 rows call for 18 lists: not grown
        assert vectors.current_lists(connection, EMBEDDER) == TRAINED_LISTS
        names = connection.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings'"))
        assert name in names.scalars().all()


def test_a_swap_cut_short_before_the_old_index_went_keeps_the_trained_one(trained):
    """A rebuild stopped after training its index, before dropping the old one: the next rebuild drops the old one
    and renames the trained one instead of training again."""
    settings, _, _ = trained
    with database.get_engine(settings).connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        name = vectors.index_name(EMBEDDER)
        connection.execute(sa.text(f"ALTER INDEX {name} RENAME TO {vectors.rebuild_name(EMBEDDER)}"))
        connection.execute(sa.text(vectors.index_definition(EMBEDDER, 1)))  # the old one, still there
        assert vectors.current_lists(connection, EMBEDDER) == TRAINED_LISTS
        assert vectors.rebuild_grown_indexes(settings) == {}
        indexes = connection.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'embeddings'"))
        assert {name, vectors.rebuild_name(EMBEDDER)} & set(indexes.scalars().all()) == {name}
        assert vectors.current_lists(connection, EMBEDDER) == TRAINED_LISTS


def test_a_build_cut_short_is_dropped_by_the_next_rebuild(fresh_settings):
    """CREATE INDEX CONCURRENTLY interrupted leaves an invalid index under the temporary name."""
    add_assets(fresh_settings, clustered_vectors(ROWS))
    temporary = vectors.rebuild_name(EMBEDDER)
    with database.get_engine(fresh_settings).connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text(vectors.index_definition(EMBEDDER, 3, temporary)))
        connection.execute(
            sa.text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{temporary}'::regclass")
        )
        assert vectors.current_lists(connection, EMBEDDER) == 1
    assert vectors.rebuild_grown_indexes(fresh_settings) == {EMBEDDER: 18}
    with database.get_engine(fresh_settings).connect() as connection:
        assert vectors.current_lists(connection, EMBEDDER) == 18
        valid = connection.execute(sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")).scalar_one()
        assert valid == 0


def test_a_worker_finding_a_rebuild_under_way_leaves_it(fresh_settings):
    add_assets(fresh_settings, clustered_vectors(ROWS))
    with database.get_engine(fresh_settings).connect() as other:
        other.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": vectors._REBUILD_LOCK})
        assert vectors.rebuild_grown_indexes(fresh_settings) == {}
        other.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": vectors._REBUILD_LOCK})
    assert vectors.rebuild_grown_indexes(fresh_settings) == {EMBEDDER: 18}


def test_training_refused_memory_is_a_configuration_error(fresh_settings, monkeypatch):
    """pgvector will not train in less memory than it needs: one line naming the index, not a retried failure."""
    add_assets(fresh_settings, clustered_vectors(ROWS))
    monkeypatch.setattr(vectors, "training_memory_mb", lambda embedder, lists: 1)
    with pytest.raises(ConfigurationError, match="cannot train the efficientnet-lite0 vector index with 18 lists"):
        vectors.rebuild_grown_indexes(fresh_settings)
    with database.get_engine(fresh_settings).connect() as connection:
        assert vectors.current_lists(connection, EMBEDDER) == 1  # the index searches used is still there


def test_training_memory_covers_what_pgvector_asks_at_a_million_rows():
    """pgvector's k-means needs its samples, a float per sample and list, and the centres (src/ivfkmeans.c)."""
    lists = vectors.lists_for(1_000_000)
    samples = 50 * lists
    needed = samples * (2 * 1280 + 8) + 4 * samples * lists + 4 * lists * lists
    assert vectors.training_memory_mb(EMBEDDER, lists) * 2**20 > needed


def test_the_documented_neighbour_query_reads_the_vector_index(fresh_settings):
    """docs/sql.md's nearest-neighbour query, with the settings it documents, is served by the IVFFlat index."""
    add_assets(fresh_settings, clustered_vectors(ROWS))
    vectors.rebuild_grown_indexes(fresh_settings)
    session_settings, statement = statements(dict(QUERIES)["Nearest neighbours of an asset"])
    assert session_settings == [
        f"SET LOCAL ivfflat.probes = {vectors.MIN_PROBES}",
        "SET LOCAL ivfflat.iterative_scan = relaxed_order",
        "SET LOCAL enable_sort = off",
    ]
    with database.get_engine(fresh_settings).begin() as connection:
        connection.exec_driver_sql("ANALYZE")
        for setting in session_settings:
            connection.exec_driver_sql(setting)
        plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement))
        assert "Index Scan using ix_embeddings_ivf_efficientnet_lite0" in plan, plan
        assert len(connection.exec_driver_sql(statement).all()) == 10


@pytest.mark.parametrize("conditions", [[], ["a.status IN ('pending', 'scored')", "a.source_kind = 'crawled'"]])
def test_searches_read_the_vector_index(fresh_settings, conditions):
    """aesq's own search is served by the IVFFlat index, filtered or not, not by an exact scan and sort."""
    add_assets(fresh_settings, clustered_vectors(ROWS))
    vectors.rebuild_grown_indexes(fresh_settings)
    with database.get_engine(fresh_settings).begin() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.execute(sa.text(vectors.search_settings(vectors.search_probes(connection, EMBEDDER, conditions))))
        query = sa.text("EXPLAIN " + vectors.nearest_query(EMBEDDER, conditions))
        plan = "\n".join(connection.execute(query, {"query": clustered_vectors(1)[0], "limit": 10}).scalars())
    assert "Index Scan using ix_embeddings_ivf_efficientnet_lite0" in plan, plan
