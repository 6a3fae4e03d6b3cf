"""Dashboard and API page times at scale: p50/p95 per page over a database of N scored assets.

Starts an embedded Postgres+pgvector in a temporary folder, seeds N assets across 20 versions of one
generator (scores of two scorers, 1280-d embeddings with their HNSW index, defects on a tenth, the
aggregate flow's statistics), writes real JPEGs for the assets whose thumbnails are requested, serves
`aesq serve`'s application with uvicorn on loopback and times HTTP requests to each page.

    .venv/bin/python bench/pages.py --assets 100000 --requests 30 --out bench/out
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VERSIONS = 20
PAGES = {
    "leaderboard": lambda r: "/",
    "leaderboard, filtered (live)": lambda r: f"/?source_kind=generated&since=2026-10-{1 + r % 20:02d}",
    # Every request compares a pair not compared before (cold: fetch, bootstraps, page); then one pair again and again.
    "compare A B (paired, cold)": lambda r: (
        f"/compare?a=bench-model:v{r % VERSIONS}&b=bench-model:v{(r + 1 + r // VERSIONS) % VERSIONS}&scorer=technical"
    ),
    "compare A B (repeated)": lambda r: "/compare?a=bench-model:v0&b=bench-model:v1&scorer=technical",
    "trends + defects": lambda r: "/trends?scorer=technical",
    "gallery bottom of a version": lambda r: (
        f"/gallery?show=bottom&scorer=technical&version=bench-model:v{r % VERSIONS}"
    ),
    "gallery defective": lambda r: f"/gallery?show=defective&scorer=technical&offset={48 * (r % 5)}",
    "asset page (+ neighbours)": lambda r: f"/assets/{1 + (r * 7919) % 1000}",
    "API assets, filtered page": lambda r: (
        f"/api/assets?scorer=technical&min_score=4&max_score=6&limit=50&offset={50 * r}"
    ),
    "API compare (cold)": lambda r: (
        f"/api/compare?a=bench-model:v{r % VERSIONS}&b=bench-model:v{(r + 3 + r // VERSIONS) % VERSIONS}&scorer=technical"
    ),
    "thumbnail (cached)": lambda r: f"/api/assets/{1 + r % 20}/thumbnail?size=256",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument(
        "--requests",
        type=int,
        default=30,
        help="timed requests per page (after 2 warm-up requests); above 38 the cold comparisons start to repeat pairs",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


def seed(settings, count: int, images: Path) -> None:
    """N scored assets with provenance, two scorers, embeddings, defects, then the aggregate flow's tables."""
    import sqlalchemy as sa
    from PIL import Image

    from aesq.analysis import aggregate
    from aesq.core import vectors
    from aesq.core.database import get_engine
    from aesq.core.writes import write_embeddings

    engine = get_engine(settings)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO generators (name, version, kind) "
            "SELECT 'bench-model', 'v' || k, 'lora' FROM generate_series(0, :n - 1) k"
        ), {"n": VERSIONS})  # fmt: skip
        connection.execute(sa.text(
            """
            INSERT INTO assets (storage, bucket, key, sha256, size_bytes, width, height, format, source_kind,
                                generator_id, prompt, seed, status, scored_at, created_at)
            SELECT 'file', :bucket, 'generated/bench-model/v' || (i % :v) || '/' || i || '.jpg', md5(i::text) || md5((-i)::text),
                   50000, 1024, 1024, 'JPEG', CASE WHEN i % 10 = 0 THEN 'crawled' ELSE 'generated' END,
                   (SELECT id FROM generators WHERE version = 'v' || (i % :v)), 'prompt ' || (i / :v), i / :v, 'scored',
                   timestamptz '2026-10-01' + (i % 45) * interval '1 day', now()
            FROM generate_series(1, :n) i
            """
        ), {"bucket": str(images), "v": VERSIONS, "n": count})  # fmt: skip
        for scorer, scale in (("technical", 1.0), ("laion-aesthetic-v2", 0.8)):
            connection.execute(sa.text(
                """
                INSERT INTO scores (asset_id, scorer, scorer_version, value, raw, created_at)
                SELECT a.id, :scorer, '1', greatest(0, least(10, :scale * (5 + (g.id % 7) * 0.1 + 1.5 * sqrt(-2 * ln(random())) * cos(2 * pi() * random())))),
                       '{}'::jsonb, a.scored_at
                FROM assets a JOIN generators g ON g.id = a.generator_id
                """
            ), {"scorer": scorer, "scale": scale})  # fmt: skip
        connection.execute(sa.text(
            """
            INSERT INTO defects (asset_id, category, severity, detail)
            SELECT id, (ARRAY['blur', 'noise', 'underexposure', 'compression'])[1 + id % 4], (id % 100) / 100.0, 'bench'
            FROM assets WHERE id % 10 = 3
            """
        ))  # fmt: skip
        rng = np.random.default_rng(0)
        for start in range(1, count + 1, 10_000):
            ids = list(range(start, min(start + 10_000, count + 1)))
            embedded = rng.standard_normal((len(ids), 1280)).astype(np.float32)
            write_embeddings(
                connection, "efficientnet-lite0", ids, embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
            )
    vectors.rebuild_grown_indexes(settings)  # trained for the rows loaded, as after scoring them
    with engine.begin() as connection:
        connection.execute(sa.text("ANALYZE"))
    aggregate.aggregate_versions(settings)
    with engine.connect() as connection:
        keys = connection.execute(sa.text("SELECT id, key FROM assets WHERE id <= 1000 ORDER BY id")).all()
    rng = np.random.default_rng(1)
    hashes = []
    for asset_id, key in keys:  # real files for the assets whose pages and thumbnails are requested
        path = images / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path, "JPEG")
        hashes.append({"id": asset_id, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    with engine.begin() as connection:  # thumbnails are made only of the bytes an asset was ingested as
        connection.execute(sa.text("UPDATE assets SET sha256 = :sha256 WHERE id = :id"), hashes)


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="aesq-bench-pages-"))
    os.environ.update(
        AESQ_DATA_DIR=str(work / "data"), AESQ_CONFIG=str(work / "absent.toml"), AESQ_SOURCES=str(work / "images")
    )
    os.environ.pop("AESQ_DATABASE_URL", None)
    import httpx
    import uvicorn

    from aesq.core import database
    from aesq.core.config import get_settings
    from aesq.web.app import create_app

    settings = get_settings()
    database.upgrade(settings=settings)
    began = time.perf_counter()
    seed(settings, args.assets, work / "images")
    seeded = time.perf_counter() - began
    port = 18000 + os.getpid() % 1000
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    results = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for page, path_for in PAGES.items():
            for warm in range(2):
                client.get(path_for(warm)).raise_for_status()
            times = []
            for request in range(args.requests):
                start = time.perf_counter()
                client.get(path_for(request + 2)).raise_for_status()
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            results[page] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 1),
                "max_ms": round(times[-1], 1),
            }
            print(
                f"{page:32s} p50 {results[page]['p50_ms']:7.1f} ms   p95 {results[page]['p95_ms']:7.1f} ms", flush=True
            )
    server.should_exit = True
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.platform()}",
        "assets": args.assets,
        "requests_per_page": args.requests,
        "seed_seconds": round(seeded, 1),
        "pages": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pages.json").write_text(json.dumps(record, indent=2))
    database.stop_embedded(settings)


if __name__ == "__main__":
    main()
