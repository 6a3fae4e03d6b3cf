"""Vector writes and kNN search at scale: embedding rows/s with the IVFFlat index kept, `vectors.nearest` p50/p95
and recall@10 against exact search, on aesq's real schema (assets + embeddings at the migration head).

No image set can be downloaded, so the vectors are synthetic but shaped like real ones: every image of `--images`
embedded with EfficientNet-Lite0 is a cluster centre, and 8 augmentations (crop, flip, colour) of 400 of them give
the within-cluster covariance. N vectors = a random centre (95 % of them) + noise of that covariance; "novel"
queries come from the 5 % of centres never stored (an image of a prompt not seen), "seen" ones from stored centres.
The 768-d embedder (clip-vit-l-14) gets the same vectors through a fixed random orthonormal 1280 -> 768 projection.

    .venv/bin/python bench/vectors.py --vectors 100000,1000000 --sustained 200000
    .venv/bin/python bench/vectors.py --vectors 100000 --writers 2 --compare-hnsw --out bench/out/hnsw
    .venv/bin/python bench/vectors.py --vectors 20000 --queries 30 --write-rows 2000 --writers 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa
from pgvector import HalfVector
from PIL import Image, ImageEnhance

from aesq.core import database, vectors
from aesq.core.config import Settings
from aesq.core.tables import EMBEDDING_DIMENSIONS
from aesq.core.writes import write_embeddings

VERSIONS = 20
HELD_OUT_SHARE = 0.05
AUGMENTED_IMAGES, AUGMENTATIONS = 400, 8
WRITE_BATCH, LOAD_BATCH, TRUTH_CHUNK = 256, 10_000, 100_000
REPEATS, WARM_UP, NEIGHBOURS = 3, 20, 10
HNSW_WRITE_ROWS = 2_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LIVE = "a.status IN ('pending', 'scored')"


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", action="append", help="stored vectors per embedder (repeatable or a comma list)")
    parser.add_argument("--embedders", default="efficientnet-lite0,clip-vit-l-14")
    parser.add_argument("--queries", type=int, default=500, help="timed queries of each kind (novel, seen)")
    parser.add_argument("--writers", default="2,4", help="concurrent writer threads (comma list)")
    parser.add_argument("--write-rows", type=int, default=20_000, help="rows each write-rate run adds")
    parser.add_argument("--sustained", type=int, default=0, help="rows to write from empty with rebuilds running")
    parser.add_argument("--compare-hnsw", action="store_true", help="also time writes into the old HNSW index")
    parser.add_argument(
        "--before-rebuild", action="store_true", help="also time kNN with half the lists (just before a rebuild)"
    )
    parser.add_argument("--data-dir", type=Path, help="where the embedded Postgres lives (default: a temp folder)")
    parser.add_argument("--images", type=Path, default=Path("/usr/share/openclipart/png"))
    parser.add_argument(
        "--embeddings-cache",
        type=Path,
        default=ROOT / "bench" / "out" / "vectors-embeddings.npz",
        help="the images' embeddings; made from --images when absent",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.vectors = [int(n) for value in args.vectors or ["100000"] for n in value.split(",")]
    args.embedders = args.embedders.split(",")
    args.writers = [int(w) for w in args.writers.split(",")]
    unknown = set(args.embedders) - set(EMBEDDING_DIMENSIONS)
    if unknown:
        parser.error(f"unknown embedders {sorted(unknown)}; aesq has {sorted(EMBEDDING_DIMENSIONS)}")
    return args


# --- synthetic embeddings ------------------------------------------------------------------------


def load_image(path: Path) -> Image.Image:
    """An RGB image no larger than the embedder needs; transparency composited on white as a viewer shows it."""
    image = Image.open(path)
    image.draft("RGB", (448, 448))
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image)
        image = background
    image = image.convert("RGB")
    image.thumbnail((448, 448))
    return image


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another picture of the same subject: a 60-100 % crop, maybe mirrored, with colour and brightness jitter."""
    width, height = image.size
    share = rng.uniform(0.6, 1.0)
    crop_width, crop_height = max(8, int(width * share)), max(8, int(height * share))
    left, top = int(rng.integers(0, width - crop_width + 1)), int(rng.integers(0, height - crop_height + 1))
    crop = image.crop((left, top, left + crop_width, top + crop_height))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Brightness(crop).enhance(rng.uniform(0.8, 1.2))


def embed_images(folder: Path, cache: Path) -> None:
    """Embed every image of `folder` (the centres) and the augmentations of 400 of them, into `cache`."""
    from aesq.models.efficientnet import EfficientNetLite0Embedder

    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images under {folder}; pass --images DIR")
    embedder = EfficientNetLite0Embedder(device="cpu")
    embedder.setup()

    def embed(images: list[Image.Image]) -> np.ndarray:
        return np.concatenate(
            [embedder.embed_prepared(embedder.prepare(images[i : i + 64])) for i in range(0, len(images), 64)]
        )

    print(f"embedding {len(files)} images of {folder} (about 20 images/s on 2 cores)", flush=True)
    began, usable, centres, refused = time.perf_counter(), [], [], 0
    for start in range(0, len(files), 512):
        images = []
        for path in files[start : start + 512]:
            try:
                images.append(load_image(path))
                usable.append(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                refused += 1
        if images:
            centres.append(embed(images))
        print(f"  {min(start + 512, len(files)):>6} images, {time.perf_counter() - began:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(usable), min(AUGMENTED_IMAGES, len(usable)), replace=False)
    augmented = []
    for index in picked:
        image = load_image(usable[index])
        augmented.append(embed([augment(image, rng) for _ in range(AUGMENTATIONS)]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        cache,
        centres=np.concatenate(centres),
        augmented=np.concatenate(augmented),
        groups=np.repeat(picked, AUGMENTATIONS),
        refused=refused,
    )
    print(f"  {len(usable)} embedded, {refused} refused by PIL, in {time.perf_counter() - began:.0f} s", flush=True)


@dataclass(frozen=True)
class Population:
    """Cluster centres and the within-cluster spread (principal axes and their standard deviations)."""

    centres: np.ndarray
    stored: np.ndarray  # indexes of the centres the stored vectors come from
    held_out: np.ndarray  # the others: novel queries
    axes: np.ndarray
    spread: np.ndarray
    refused_images: int

    @classmethod
    def from_cache(cls, cache: Path) -> Population:
        """The population the cached embeddings describe; deviations pooled around each image's augmentation mean."""
        saved = np.load(cache)
        centres, augmented, groups = (saved[name].astype(np.float64) for name in ("centres", "augmented", "groups"))
        deviations = np.concatenate(
            [augmented[groups == g] - augmented[groups == g].mean(0) for g in np.unique(groups)]
        )
        deviations *= np.sqrt(AUGMENTATIONS / (AUGMENTATIONS - 1))  # unbiased within a group
        _, singular, axes = np.linalg.svd(deviations, full_matrices=False)
        order = np.random.default_rng(7).permutation(len(centres))
        held = round(HELD_OUT_SHARE * len(centres))
        return cls(
            centres, order[held:], order[:held], axes, singular / np.sqrt(len(deviations)), int(saved["refused"])
        )

    def sample(self, centres: np.ndarray, count: int, seed: int, dimension: int) -> np.ndarray:
        """`count` L2-normalised float16 vectors around random ones of `centres`, projected to `dimension`."""
        rng = np.random.default_rng(seed)
        projection = projection_to(dimension)
        out = np.empty((count, dimension), np.float16)
        for start in range(0, count, 50_000):
            size = min(50_000, count - start)
            chosen = self.centres[centres[rng.integers(len(centres), size=size)]]
            batch = chosen + (rng.standard_normal((size, len(self.spread))) * self.spread) @ self.axes
            if projection is not None:
                batch = batch @ projection
            out[start : start + size] = batch / np.linalg.norm(batch, axis=1, keepdims=True)
        return out


def projection_to(dimension: int) -> np.ndarray | None:
    """A fixed random orthonormal 1280 -> `dimension` map (None for 1280): stands in for a 768-d embedder."""
    if dimension == 1280:
        return None
    basis, _ = np.linalg.qr(np.random.default_rng(768).standard_normal((1280, dimension)))
    return basis


# --- database ------------------------------------------------------------------------------------


def machine_facts(engine: sa.Engine) -> dict[str, object]:
    """What the numbers depend on: cores, Postgres and pgvector versions, shared_buffers."""
    with engine.connect() as connection:
        facts = {
            "machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.platform()}",
            "postgres": connection.execute(sa.text("SHOW server_version")).scalar_one(),
            "pgvector": connection.execute(
                sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar_one(),
            "shared_buffers": connection.execute(sa.text("SHOW shared_buffers")).scalar_one(),
        }
    return facts


def create_assets(engine: sa.Engine, count: int) -> list[int]:
    """`count` scored assets over 20 versions of one generator, a tenth crawled (no generator); their ids in order."""
    with engine.begin() as connection:
        first = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM assets")).scalar_one()
        connection.execute(sa.text(
            "INSERT INTO generators (name, version, kind) "
            "SELECT 'bench-model', 'v' || k, 'lora' FROM generate_series(0, :v - 1) k ON CONFLICT DO NOTHING"
        ), {"v": VERSIONS})  # fmt: skip
        connection.execute(sa.text(
            """
            INSERT INTO assets (storage, bucket, key, sha256, size_bytes, width, height, format, source_kind,
                                generator_id, prompt, seed, status, scored_at)
            SELECT 'file', '/bench', 'vectors/' || i || '.png', md5(i::text) || md5((-i)::text), 50000, 512, 512,
                   'PNG', CASE WHEN i % 10 = 0 THEN 'crawled' ELSE 'generated' END,
                   CASE WHEN i % 10 <> 0 THEN (SELECT id FROM generators WHERE name = 'bench-model'
                                                AND version = 'v' || (i / 10) % :v) END,
                   'prompt ' || i, i, 'scored', now()
            FROM generate_series(:first + 1, :first + :n) i
            """
        ), {"v": VERSIONS, "n": count, "first": first})  # fmt: skip
        return list(
            connection.execute(sa.text("SELECT id FROM assets WHERE id > :f ORDER BY id"), {"f": first}).scalars()
        )


def load(engine: sa.Engine, embedder: str, ids: Sequence[int], rows: np.ndarray) -> float:
    """Store the embeddings in large batches through aesq's write path; the seconds it took."""
    began = time.perf_counter()
    for start in range(0, len(ids), LOAD_BATCH):
        with engine.begin() as connection:
            write_embeddings(connection, embedder, ids[start : start + LOAD_BATCH], rows[start : start + LOAD_BATCH])
    with engine.begin() as connection:
        connection.execute(sa.text("ANALYZE assets, embeddings"))  # planner estimates for the join
    return time.perf_counter() - began


def write_rate(engine: sa.Engine, embedder: str, ids: Sequence[int], rows: np.ndarray, writers: int) -> float:
    """Rows/s of `writers` threads writing 256-row batches, each batch in its own transaction as scoring does."""

    def write(start: int) -> None:
        with engine.begin() as connection:
            write_embeddings(connection, embedder, ids[start : start + WRITE_BATCH], rows[start : start + WRITE_BATCH])

    began = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(0, len(ids), WRITE_BATCH)))
    return len(ids) / (time.perf_counter() - began)


def index_lists(engine: sa.Engine, embedder: str) -> int | None:
    """The lists the embedder's index holds now."""
    with engine.connect() as connection:
        return vectors.current_lists(connection, embedder)


# --- kNN -----------------------------------------------------------------------------------------


def filters(engine: sa.Engine) -> dict[str, tuple[list[str], dict[str, object]]]:
    """The searches timed: every live asset, one generator version (~4.5 %), crawled assets only (10 %)."""
    with engine.connect() as connection:
        version = connection.execute(
            sa.text("SELECT id FROM generators WHERE name = 'bench-model' AND version = 'v0'")
        ).scalar_one()
    return {
        "all": ([LIVE], {}),
        "one version": ([LIVE, "a.generator_id = :g"], {"g": version}),
        "crawled": ([LIVE, "a.source_kind = 'crawled'"], {}),
    }


def eligible(engine: sa.Engine, ids: np.ndarray, conditions: list[str], params: dict[str, object]) -> np.ndarray:
    """Which stored rows (by position in `ids`) a search with `conditions` may return."""
    with engine.connect() as connection:
        matching = connection.execute(
            sa.text(
                f"SELECT e.asset_id FROM embeddings e JOIN assets a ON a.id = e.asset_id WHERE {' AND '.join(conditions)}"
            ),
            params,
        ).scalars()
        return np.isin(ids, np.fromiter(matching, np.int64))


def exact_neighbours(stored: np.ndarray, queries: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
    """Per mask, the positions of each query's 10 nearest stored rows by cosine, in 100k-row chunks (memory)."""
    query = queries.astype(np.float32)
    best = [(np.empty((len(query), 0)), np.empty((len(query), 0), np.int64)) for _ in masks]
    for start in range(0, len(stored), TRUTH_CHUNK):
        chunk = stored[start : start + TRUTH_CHUNK].astype(np.float32)
        similarity = (query @ chunk.T) / np.linalg.norm(chunk, axis=1)
        for position, mask in enumerate(masks):
            masked = np.where(mask[start : start + TRUTH_CHUNK], similarity, -np.inf)
            keep = min(NEIGHBOURS, masked.shape[1])
            top = np.argpartition(-masked, keep - 1, axis=1)[:, :keep]
            scores, indexes = best[position]
            best[position] = (
                np.concatenate([scores, np.take_along_axis(masked, top, 1)], 1),
                np.concatenate([indexes, top + start], 1),
            )
    return [np.take_along_axis(indexes, np.argsort(-scores, 1)[:, :NEIGHBOURS], 1) for scores, indexes in best]


def time_searches(
    engine: sa.Engine, embedder: str, queries: np.ndarray, conditions: list[str], params: dict[str, object]
) -> tuple[list[float], list[list[int]]]:
    """Milliseconds and returned asset ids of `vectors.nearest` per query, each in its own transaction."""
    times, found = [], []
    for query in queries:
        began = time.perf_counter()
        with engine.begin() as connection:
            rows = vectors.nearest(connection, embedder, HalfVector(query), NEIGHBOURS, conditions, params)
        times.append((time.perf_counter() - began) * 1000)
        found.append([asset_id for asset_id, _ in rows])
    return times, found


def warm_index(engine: sa.Engine, embedder: str) -> None:
    """Read every list once, so the index is in the buffer cache as on a server that has been answering searches
    (a fresh one reads it from the OS cache as searches come: see BENCHMARKS.md)."""
    lists = index_lists(engine, embedder) or 1
    with engine.begin() as connection:
        connection.execute(sa.text(vectors.search_settings(lists)))
        query = sa.text(vectors.nearest_query(embedder))
        connection.execute(query, {"query": np.ones(EMBEDDING_DIMENSIONS[embedder], np.float16), "limit": 1}).all()


def knn(engine: sa.Engine, embedder: str, ids: np.ndarray, stored: np.ndarray, queries: dict[str, np.ndarray]) -> dict:
    """p50/p95 ms, recall@10 and fewest rows returned per filter and query kind."""
    searches = filters(engine)
    masks = [eligible(engine, ids, *search) for search in searches.values()]
    warm_index(engine, embedder)
    time_searches(engine, embedder, queries["seen"][:WARM_UP], [LIVE], {})
    results: dict[str, dict] = {}
    for kind, batch in queries.items():
        truths = exact_neighbours(stored, batch, masks)
        for (name, (conditions, params)), mask, truth in zip(searches.items(), masks, truths):
            times, found = time_searches(engine, embedder, batch, conditions, params)
            recall = [len(set(got) & set(ids[want])) / NEIGHBOURS for got, want in zip(found, truth)]
            with engine.connect() as connection:
                probes = vectors.search_probes(connection, embedder, conditions, params)
            results[f"{name}, {kind}"] = {
                "share_of_rows": round(float(mask.mean()), 4),
                "probes": probes,
                "p50_ms": round(float(np.percentile(times, 50)), 1),
                "p95_ms": round(float(np.percentile(times, 95)), 1),
                "recall_at_10": round(float(np.mean(recall)), 4),
                "fewest_rows": min(len(got) for got in found),
            }
    return results


# --- runs ----------------------------------------------------------------------------------------


def sustained(settings: Settings, embedder: str, population: Population, rows: int, writers: int) -> dict:
    """Rows/s writing `rows` into an empty embedder with `vectors.rebuild_grown_indexes` looping alongside,
    until the last rebuild the rows call for is done: the rate scoring can keep up."""
    engine = database.get_engine(settings)
    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE embeddings"))
        connection.execute(sa.text(f"DROP INDEX {vectors.index_name(embedder)}"))
        connection.execute(sa.text(vectors.index_definition(embedder, 1)))
    ids = create_assets(engine, rows)
    data = population.sample(population.stored, rows, 21, EMBEDDING_DIMENSIONS[embedder])
    rebuilds: list[dict] = []
    writing = threading.Event()
    writing.set()
    began = time.perf_counter()

    def rebuild_while_writing() -> None:
        while writing.is_set():
            started = time.perf_counter()
            rebuilt = vectors.rebuild_grown_indexes(settings)
            if embedder in rebuilt:
                rebuilds.append({"at_s": round(started - began, 1), "lists": rebuilt[embedder],
                                 "seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
            else:
                time.sleep(0.5)

    rebuilder = threading.Thread(target=rebuild_while_writing)
    rebuilder.start()
    written = write_rate(engine, embedder, ids, data, writers)
    writes_done = time.perf_counter() - began
    writing.clear()
    rebuilder.join()
    final = vectors.rebuild_grown_indexes(settings)
    total = time.perf_counter() - began
    return {
        "rows": rows,
        "writers": writers,
        "rows_per_s": round(rows / total),
        "rows_per_s_writing": round(written),
        "writes_s": round(writes_done, 1),
        "total_s": round(total, 1),
        "rebuilds": rebuilds
        + ([{"at_s": round(writes_done, 1), "lists": final[embedder]}] if embedder in final else []),
        "lists_at_end": index_lists(engine, embedder),
    }


def hnsw_write_rate(engine: sa.Engine, embedder: str, ids: Sequence[int], rows: np.ndarray) -> dict:
    """The index this design replaced: build an HNSW index over the same rows, time 2 writers adding rows to it."""
    dimension = EMBEDDING_DIMENSIONS[embedder]
    name = f"ix_embeddings_hnsw_{embedder.replace('-', '_')}"
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP INDEX {vectors.index_name(embedder)}"))
        connection.execute(sa.text("SET LOCAL maintenance_work_mem = '2GB'"))
        began = time.perf_counter()
        connection.execute(sa.text(
            f"CREATE INDEX {name} ON embeddings USING hnsw ((vector::halfvec({dimension})) halfvec_cosine_ops) "
            f"WHERE embedder = '{embedder}'"
        ))  # fmt: skip
    built = time.perf_counter() - began
    return {
        "build_s": round(built, 1),
        "rows": len(ids),
        "rows_per_s": round(write_rate(engine, embedder, ids, rows, 2)),
    }


def run_size(settings: Settings, args: argparse.Namespace, population: Population, count: int) -> dict:
    """Every measurement at `count` stored vectors per embedder, on a fresh database."""
    engine = database.get_engine(settings)
    write_batches = REPEATS * len(args.writers)
    ids = create_assets(engine, count)
    spare = create_assets(engine, write_batches * args.write_rows + HNSW_WRITE_ROWS)
    novel = population.sample(population.held_out, args.queries, 3, 1280)
    seen = population.sample(population.stored, args.queries + WARM_UP, 2, 1280)
    results: dict[str, dict] = {}
    for embedder in args.embedders:
        dimension = EMBEDDING_DIMENSIONS[embedder]
        stored = population.sample(population.stored, count, 1, dimension)
        projection = projection_to(dimension)
        queries = {"novel": novel, "seen": seen[WARM_UP:]}
        if projection is not None:
            queries = {kind: project(batch, projection) for kind, batch in queries.items()}
        print(f"\n{embedder}, {count:,} vectors: loading", flush=True)
        load_s = load(engine, embedder, ids, stored)
        began = time.perf_counter()
        vectors.rebuild_grown_indexes(settings)
        build_s = time.perf_counter() - began
        result: dict = {
            "load_s": round(load_s, 1),
            "index_build_s": round(build_s, 1),
            "lists": index_lists(engine, embedder),
            "probes": vectors.probes_for(index_lists(engine, embedder) or 1),
        }
        print(f"  loaded in {load_s:.0f} s, index ({result['lists']} lists) built in {build_s:.1f} s", flush=True)
        result["knn"] = knn(engine, embedder, np.array(ids), stored, queries)
        extra = population.sample(population.stored, len(spare), 11, dimension)
        result["write_rows_per_s"] = {}
        for setting, writers in enumerate(args.writers):
            rates = []
            for repeat in range(REPEATS):
                start = (setting * REPEATS + repeat) * args.write_rows
                chunk = slice(start, start + args.write_rows)
                rates.append(write_rate(engine, embedder, spare[chunk], extra[chunk], writers))
            result["write_rows_per_s"][writers] = round(statistics.median(rates))
            print(
                f"  {writers} writers: {result['write_rows_per_s'][writers]:,} rows/s (median of {REPEATS})", flush=True
            )
        if args.before_rebuild:
            result["before_rebuild"] = before_rebuild(engine, embedder, spare, np.array(ids), stored, queries)
        result["extra"] = extra[-HNSW_WRITE_ROWS:]
        results[embedder] = result
    if args.compare_hnsw:
        for embedder in args.embedders:
            print(f"  {embedder}: building HNSW over {count:,} rows for the comparison (slow)", flush=True)
            results[embedder]["hnsw"] = hnsw_write_rate(
                engine, embedder, spare[-HNSW_WRITE_ROWS:], results[embedder]["extra"]
            )
    for result in results.values():
        del result["extra"]
    return results


def before_rebuild(
    engine: sa.Engine, embedder: str, written: Sequence[int], ids: np.ndarray, stored: np.ndarray, queries: dict
) -> dict:
    """kNN in the state just before a rebuild: the index holds half the lists its rows call for (it was built when
    they were half as many). The write-rate rows are removed first so exact search covers every stored row."""
    lists = max(1, vectors.lists_for(len(ids)) // 2)
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(
            sa.text("DELETE FROM embeddings WHERE embedder = :e AND asset_id = ANY(:ids)"),
            {"e": embedder, "ids": list(written)},
        )
        connection.execute(sa.text(f"DROP INDEX {vectors.index_name(embedder)}"))
        connection.execute(sa.text(f"SET maintenance_work_mem = '{vectors.training_memory_mb(embedder, lists)}MB'"))
        began = time.perf_counter()
        connection.execute(sa.text(vectors.index_definition(embedder, lists)))
        built_s = time.perf_counter() - began
        connection.execute(sa.text("ANALYZE embeddings"))
    print(f"  before a rebuild: index rebuilt with {lists} lists in {built_s:.0f} s", flush=True)
    return {"lists": lists, "probes": vectors.probes_for(lists), "knn": knn(engine, embedder, ids, stored, queries)}


def project(batch: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """1280-d vectors mapped through `projection` and re-normalised, as float16."""
    mapped = batch.astype(np.float64) @ projection
    return (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)).astype(np.float16)


def print_table(record: dict) -> None:
    """The results in rows under 110 columns."""
    print(f"\n{'vectors':>9} {'embedder':18} {'search':30} {'p50 ms':>7} {'p95 ms':>7} {'recall':>7} {'min rows':>8}")
    for count, embedders in record["sizes"].items():
        for embedder, result in embedders.items():
            for search, row in result["knn"].items():
                print(f"{int(count):>9,} {embedder:18} {search:30} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f}"
                      f" {row['recall_at_10']:>7.3f} {row['fewest_rows']:>8}")  # fmt: skip
            if "before_rebuild" in result:
                before = result["before_rebuild"]
                for search, row in before["knn"].items():
                    label = f"{search}, {before['lists']} lists"
                    print(f"{int(count):>9,} {embedder:18} {label:30} {row['p50_ms']:>7.1f} {row['p95_ms']:>7.1f}"
                          f" {row['recall_at_10']:>7.3f} {row['fewest_rows']:>8}")  # fmt: skip
            writes = ", ".join(f"{w} writers {rate:,}/s" for w, rate in result["write_rows_per_s"].items())
            print(f"{'':>9} {embedder:18} index build {result['index_build_s']} s ({result['lists']} lists); {writes}")
            if "hnsw" in result:
                hnsw = result["hnsw"]
                print(f"{'':>9} {embedder:18} HNSW: build {hnsw['build_s']} s, 2 writers {hnsw['rows_per_s']:,}/s")
    for embedder, row in record.get("sustained", {}).items():
        for run in row:
            print(f"sustained {embedder}: {run['rows']:,} rows from empty, {run['writers']} writers:"
                  f" {run['rows_per_s']:,} rows/s with rebuilds ({len(run['rebuilds'])}, {run['lists_at_end']} lists"
                  f" at end; {run['rows_per_s_writing']:,}/s while writing)")  # fmt: skip


def main() -> None:
    args = parse_args()
    if not args.embeddings_cache.exists():
        embed_images(args.images, args.embeddings_cache)
    population = Population.from_cache(args.embeddings_cache)
    work = args.data_dir or Path(tempfile.mkdtemp(prefix="aesq-bench-vectors-"))
    record: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "centres": len(population.centres),
        "held_out_centres": len(population.held_out),
        "refused_images": population.refused_images,
        "note": "synthetic vectors around real EfficientNet-Lite0 image embeddings; the 768-d embedder's are the "
        "same vectors through a fixed random orthonormal projection (no CLIP weights here)",
        "sizes": {},
    }
    print(f"{len(population.centres)} image centres ({len(population.held_out)} held out for novel queries), "
          f"{population.refused_images} images refused; {record['note']}")  # fmt: skip
    runs = [(f"vectors-{count}", count) for count in args.vectors] + [("sustained", 0)] * bool(args.sustained)
    for folder, count in runs:
        settings = Settings(data_dir=work / folder, database_url=None)
        if settings.data_dir.exists():
            raise SystemExit(f"{settings.data_dir} exists; pass an empty --data-dir")
        try:
            database.upgrade(settings=settings)
            if "machine" not in record:
                record.update(machine_facts(database.get_engine(settings)))
                print(
                    ", ".join(f"{key} {record[key]}" for key in ("machine", "postgres", "pgvector", "shared_buffers"))
                )
            if count:
                record["sizes"][count] = run_size(settings, args, population, count)
            else:
                record["sustained"] = {
                    embedder: [sustained(settings, embedder, population, args.sustained, w) for w in args.writers]
                    for embedder in args.embedders
                }
        finally:
            database.stop_embedded(settings)
            if args.data_dir is None:
                shutil.rmtree(settings.data_dir, ignore_errors=True)
    print_table(record)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vectors.json").write_text(json.dumps(record, indent=2, default=str))
    if args.data_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
