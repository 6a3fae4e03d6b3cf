"""Vector search: one IVFFlat index per embedder, trained on the vectors it holds, and the one nearest-neighbour
query every vector read goes through (`aesq similar`, the API, the asset page, near-duplicate detection).

Why IVFFlat and not HNSW (measured side by side, BENCHMARKS.md "Vectors"): inserting into a 1280-d HNSW graph costs
3-5 ms of a core per row (about 200 rows/s here), an IVFFlat insert compares the row with the lists' centres only.
IVFFlat must be trained on data: an embedder's index starts with one list (an exact scan) and is rebuilt with more
lists, concurrently with reads and writes, each time the embedder's rows have doubled since it was built
(`rebuild_grown_indexes`, run after scoring).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from aesq.core.config import ConfigurationError, Settings
from aesq.core.database import get_engine
from aesq.core.tables import EMBEDDING_DIMENSIONS

# Half as many lists again as pgvector advises (rows / 1000 up to a million rows, √rows beyond): at a million
# vectors 1,500 lists answered in p95 11 ms where 1,000 took 15 ms, both with 6 probes and the same recall, for a
# quarter less write rate (each insert compares its row with every list's centre). BENCHMARKS.md "Vectors".
LISTS_PER_ADVISED = 1.5
FIRST_TRAINING_ROWS = 10_000  # below this one list (an exact scan) is as fast as any
PROBED_SHARE = 0.005  # lists read per query (8 of 1,500); BENCHMARKS.md "Vectors" gives the recall it buys
MIN_PROBES = 8
MAX_FILTER_WIDENING = 4  # a filter keeping under 1/10,000 of the rows reads no more lists than one keeping 1/10,000


def index_name(embedder: str) -> str:
    """The embedder's IVFFlat index (a partial index over its own rows)."""
    return f"ix_embeddings_ivf_{embedder.replace('-', '_')}"


def indexed_vector(embedder: str, alias: str = "e") -> str:
    """The expression the embedder's index covers; a query must order by it, literally, to use the index."""
    return f"{alias}.vector::halfvec({EMBEDDING_DIMENSIONS[embedder]})"


def index_definition(embedder: str, lists: int, name: str | None = None, concurrently: bool = False) -> str:
    """The CREATE INDEX statement of an embedder's index with `lists` lists."""
    return (
        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}{name or index_name(embedder)} ON embeddings "
        f"USING ivfflat ((vector::halfvec({EMBEDDING_DIMENSIONS[embedder]})) halfvec_cosine_ops) "
        f"WITH (lists = {lists}) WHERE embedder = '{embedder}'"
    )


def lists_for(rows: int) -> int:
    """How many lists `rows` vectors are split into: 1.5 times pgvector's advice (rows / 1000 up to a million rows,
    √rows beyond)."""
    if rows < FIRST_TRAINING_ROWS:
        return 1
    return math.floor(LISTS_PER_ADVISED * (rows / 1000 if rows <= 1_000_000 else math.isqrt(rows)))


def probes_for(lists: int, share: float = 1.0) -> int:
    """How many lists one query reads: a share of them, never fewer than MIN_PROBES (or all when there are fewer);
    more under a filter keeping `share` of the rows, whose k closest lie farther out: (1 / share)^0.15 times as many,
    which gave filtered searches the recall of unfiltered ones (BENCHMARKS.md "Vectors")."""
    widening = min(MAX_FILTER_WIDENING, max(share, 1e-9) ** -0.15)
    return min(lists, round(max(MIN_PROBES, math.ceil(lists * PROBED_SHARE)) * widening))


def current_lists(connection: Connection, embedder: str) -> int | None:
    """The lists of the embedder's valid index (the larger one while a rebuild swaps a new one in, which the planner
    prefers); None when it has none."""
    return max(_valid_indexes(connection, embedder).values(), default=None)


def _valid_indexes(connection: Connection, embedder: str) -> dict[str, int]:
    """The embedder's valid indexes, under its name or a rebuild's, with their lists."""
    rows = connection.execute(
        text(
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
            " WHERE c.relname IN (:name, :rebuild) AND i.indisvalid"
        ),
        {"name": index_name(embedder), "rebuild": rebuild_name(embedder)},
    ).all()
    return {
        row.relname: next(
            (int(option.split("=", 1)[1]) for option in row.reloptions or () if option.startswith("lists=")), 100
        )  # an index made without the option has pgvector's default, 100
        for row in rows
    }


def rebuild_name(embedder: str) -> str:
    """The name a rebuilt index has until it replaces the embedder's index."""
    return f"{index_name(embedder)}_rebuild"


def search_settings(probes: int) -> str:
    """The statement setting what a nearest-neighbour query runs under, for this transaction only (one round trip)."""
    settings = {
        "ivfflat.probes": str(probes),
        # Filters run inside the index scan, which reads more lists until LIMIT rows pass; its order is then only
        # roughly by distance, so the query sorts its rows again.
        "ivfflat.iterative_scan": "relaxed_order",
        # The planner counts no cost for reading TOASTed vectors, so it finds an exact scan and sort of every
        # vector cheaper than the index (tenths of a second at 100,000 rows): with sorts off the index is the
        # one plan left that needs no sort of the candidates.
        "enable_sort": "off",
    }
    return "SELECT " + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in settings.items())


def _where(embedder: str, conditions: Sequence[str]) -> str:
    """The rows a search may return: the embedder's (its name inlined to match the partial index) meeting the
    conditions."""
    return " AND ".join([f"e.embedder = '{embedder}'", *conditions])


def nearest_query(embedder: str, conditions: Sequence[str] = ()) -> str:
    """The SQL of `nearest`: parameters :query (a halfvec) and :limit, and those of the conditions."""
    return f"""
        WITH candidates AS MATERIALIZED (
            SELECT e.asset_id, {indexed_vector(embedder)} <=> CAST(:query AS halfvec) AS distance
            FROM embeddings e JOIN assets a ON a.id = e.asset_id
            WHERE {_where(embedder, conditions)}
            ORDER BY distance
            LIMIT :limit
        )
        SELECT asset_id, distance FROM candidates ORDER BY distance, asset_id
        """


def search_probes(
    connection: Connection, embedder: str, conditions: Sequence[str] = (), params: dict[str, object] | None = None
) -> int:
    """The lists a search under `conditions` (parameters in `params`) reads in the embedder's index: `probes_for`
    its lists and the share of its rows the planner expects the conditions to keep."""
    lists = current_lists(connection, embedder) or 1
    if not conditions or probes_for(lists) >= lists:
        return probes_for(lists)
    # Both counts in one plan, estimated from the same statistics: the filtered rows, then all the embedder's.
    plan = connection.execute(
        text(
            "EXPLAIN (FORMAT JSON) SELECT FROM embeddings e JOIN assets a ON a.id = e.asset_id "
            f"WHERE {_where(embedder, conditions)} UNION ALL SELECT FROM embeddings e WHERE {_where(embedder, ())}"
        ),
        params or {},
    ).scalar_one()
    branches = plan[0]["Plan"].get("Plans", [])
    if len(branches) != 2:  # the planner proved the filter keeps nothing and dropped its branch: nothing to widen
        return probes_for(lists)
    kept, rows = (branch["Plan Rows"] for branch in branches)
    return probes_for(lists, min(1.0, kept / max(rows, 1)))


def nearest(
    connection: Connection,
    embedder: str,
    query: object,
    limit: int,
    conditions: Sequence[str] = (),
    params: dict[str, object] | None = None,
) -> list[tuple[int, float]]:
    """The `limit` embeddings closest to `query` (cosine distance) among the embedder's rows of assets `a` meeting
    `conditions` (SQL over `e` and `a`, parameters in `params`), closest first: (asset id, distance).

    The conditions run inside the index scan (pgvector 0.8's iterative scan), so a filtered search still returns
    `limit` rows when that many exist; it reads more lists when they keep few rows. Runs in the caller's
    transaction (not an AUTOCOMMIT connection: the settings would not hold), whose search settings it changes until
    it ends.
    """
    bound = {**(params or {}), "query": query, "limit": limit}
    connection.execute(text(search_settings(search_probes(connection, embedder, conditions, bound))))
    rows = connection.execute(text(nearest_query(embedder, conditions)), bound).all()
    return [(int(row.asset_id), float(row.distance)) for row in rows]


# One rebuild at a time on `embeddings`, whatever the embedder: two CREATE INDEX CONCURRENTLY on one table wait
# for each other's snapshots, and Postgres may end one as a deadlock after minutes of training.
_REBUILD_LOCK = zlib.crc32(b"aesq-vector-index-rebuild")


def rebuild_grown_indexes(settings: Settings) -> dict[str, int]:
    """Rebuild each embedder's index whose rows call for twice the lists it was built with, without blocking
    reads or writes (CREATE INDEX CONCURRENTLY, then swap); returns {embedder: its new lists}. Skipped, {}, while
    another worker rebuilds.

    A rebuild interrupted before the swap leaves an invalid index under the temporary name, dropped by the next
    one; interrupted within the swap, a valid one the next rebuild puts in place of the old. ConfigurationError (not retried)
    when the server will not give training the memory it needs.
    """
    rebuilt = {}
    with get_engine(settings).connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": _REBUILD_LOCK}).scalar_one():
            return {}
        try:
            for embedder in EMBEDDING_DIMENSIONS:
                lists = _rebuild_if_grown(connection, embedder)
                if lists is not None:
                    rebuilt[embedder] = lists
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _REBUILD_LOCK})
    return rebuilt


def _rebuild_if_grown(connection: Connection, embedder: str) -> int | None:
    """Rebuild one embedder's index when its rows call for at least twice its lists; the new lists, or None."""
    name, temporary = index_name(embedder), rebuild_name(embedder)
    valid = _valid_indexes(connection, embedder)
    if temporary in valid:  # the last rebuild trained its index and stopped within the swap: finish it
        _swap_in(connection, embedder)
        valid = {name: valid[temporary]}
    built = valid.get(name)
    rows = connection.execute(text("SELECT count(*) FROM embeddings WHERE embedder = :e"), {"e": embedder}).scalar_one()
    wanted = lists_for(rows)
    if built is not None and wanted < 2 * built:
        return None
    connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {temporary}"))
    memory = training_memory_mb(embedder, wanted)
    connection.execute(text(f"SET maintenance_work_mem = '{memory}MB'"))
    try:
        connection.execute(text(index_definition(embedder, wanted, temporary, concurrently=True)))
    except DBAPIError as error:
        if isinstance(error.orig, psycopg.errors.ProgramLimitExceeded | psycopg.errors.OutOfMemory):
            raise ConfigurationError(
                f"cannot train the {embedder} vector index with {wanted} lists in {memory} MB of memory "
                f"({' '.join(str(error.orig).split())}): give the Postgres server more memory"
            ) from error
        raise
    finally:
        connection.execute(text("RESET maintenance_work_mem"))
    _swap_in(connection, embedder)
    return wanted


def _swap_in(connection: Connection, embedder: str) -> None:
    """The rebuilt index replaces the embedder's index (the planner may use either meanwhile)."""
    connection.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {index_name(embedder)}"))
    connection.execute(text(f"ALTER INDEX {rebuild_name(embedder)} RENAME TO {index_name(embedder)}"))


def training_memory_mb(embedder: str, lists: int) -> int:
    """maintenance_work_mem for training `lists` lists: pgvector's k-means refuses to start in less than its whole
    working set (50 samples per list, at least 10,000, and a float per sample and list), counted here as pgvector
    counts it with samples at full precision, plus a tenth and 64 MB to spare."""
    samples = max(50 * lists, 10_000)
    vector_bytes = 4 * EMBEDDING_DIMENSIONS[embedder] + 8
    working_set = (samples + 3 * lists) * vector_bytes + 4 * samples * lists + 4 * lists * lists + 8 * (samples + lists)
    return 64 + math.ceil(1.1 * working_set / 2**20)
