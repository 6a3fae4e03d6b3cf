"""The `workers` part of bench/scale.py: 1, 2 and 4 concurrent `aesq run` on one S3 source, with the work each did.

One run starts its own services on loopback (moto_server, an embedded Postgres+pgvector, a Prefect API
server), uploads N generated JPEGs, then for each worker count empties the database, starts that many
`aesq run s3://bench/` processes at once and reports the wall time (median of `--repeats`), images/s,
CPU seconds of all workers, and from aesq's work log the object reads and model runs per image: the
duplicated work (1.0 means every image was fetched and run through each model once).

    .venv/bin/python bench/scale.py workers --images 300 --out bench/out
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psutil
from spine import (
    configure_environment,
    executable,
    load_photos,
    start_postgres,
    start_prefect,
    start_s3,
    synthetic_jpeg,
)

BUCKET = "bench"
TABLES = "work_log, ingest_queue, defects, embeddings, scores, version_stats, version_daily_stats, stale_versions, assets, generators"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this part."""
    parser.add_argument("--images", type=int, default=300, help="distinct images in the source")
    parser.add_argument("--size", type=int, default=256, help="side of the square JPEGs in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="concurrent runs to compare")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each worker count")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="folder for workers.json")


def upload(images: int, size: int) -> None:
    """Put `images` distinct JPEGs under generated/bench/v<n>/ in the bucket."""
    from aesq.core.config import get_settings
    from aesq.core.storage import minio_client

    client = minio_client(get_settings())
    client.make_bucket(BUCKET)
    photos = load_photos()
    for index in range(images):
        payload = synthetic_jpeg(index, size, photos)
        client.put_object(BUCKET, f"generated/bench/v{index % 4}/{index:06d}.jpg", io.BytesIO(payload), len(payload))


def empty_database() -> None:
    """Forget every asset and its outputs, so the next round starts from the same state."""
    import sqlalchemy as sa

    from aesq.core.config import get_settings
    from aesq.core.database import get_engine

    with get_engine(get_settings()).begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {TABLES} CASCADE"))


def work_per_image(images: int) -> dict[str, float]:
    """Items per stage of the work log, per image in the source."""
    import sqlalchemy as sa

    from aesq.core.config import get_settings
    from aesq.core.database import get_engine

    with get_engine(get_settings()).connect() as connection:
        rows = connection.execute(sa.text("SELECT stage, sum(items) FROM work_log GROUP BY stage")).all()
        scored = connection.execute(sa.text("SELECT count(*) FROM assets WHERE status = 'scored'")).scalar_one()
    return {"scored": scored, **{stage: int(items) / images for stage, items in rows}}


def one_round(workers: int, images: int) -> dict:
    """Start `workers` runs at once; wall time, their CPU time (and the whole machine's: Postgres, the S3 and
    Prefect servers too) and the work done per image."""
    empty_database()
    machine_before = psutil.cpu_times()
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [executable("aesq"), "run", f"s3://{BUCKET}/"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    watched = [psutil.Process(process.pid) for process in processes]
    cpu = {process.pid: 0.0 for process in processes}
    while any(process.poll() is None for process in processes):
        for handle in watched:
            try:
                times = handle.cpu_times()
                cpu[handle.pid] = times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    wall = time.perf_counter() - started
    machine_after = psutil.cpu_times()
    machine_cpu = sum(getattr(machine_after, f) - getattr(machine_before, f) for f in ("user", "system"))
    failures = [process.stderr.read()[-2000:] for process in processes if process.returncode != 0]
    if failures:
        raise RuntimeError(f"{len(failures)} of {workers} runs failed: {failures[0]}")
    return {"wall_s": wall, "cpu_s": sum(cpu.values()), "machine_cpu_s": machine_cpu, **work_per_image(images)}


def run(args: argparse.Namespace) -> None:
    """Set up, measure each worker count `--repeats` times, print and save the medians."""
    args.out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="aesq-bench-workers-") as tmp_name:
        tmp = Path(tmp_name)
        s3, database_url, api_url = start_s3(stack, tmp), start_postgres(stack, tmp), start_prefect(stack, tmp)
        configure_environment(tmp, s3, database_url, api_url, args.batch_size)
        from aesq.core import database
        from aesq.core.config import get_settings

        database.upgrade(settings=get_settings())
        upload(args.images, args.size)
        results = {}
        for workers in args.workers:
            rounds = [one_round(workers, args.images) for _ in range(args.repeats)]
            median = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
            median["images_per_s"] = args.images / median["wall_s"]
            results[workers] = {"median": median, "rounds": rounds}
            print(
                f"{workers} worker(s): {median['wall_s']:.1f} s wall, {median['images_per_s']:.1f} images/s, "
                f"{median['cpu_s']:.0f} CPU s in aesq ({median['machine_cpu_s']:.0f} machine-wide), fetches/image {median.get('fetch', 0):.3f}, "
                + ", ".join(f"{k} {v:.3f}" for k, v in median.items() if k.startswith("model:")),
                flush=True,
            )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "command": f"bench/scale.py workers --images {args.images} --size {args.size} --repeats {args.repeats}",
        "results": results,
    }
    (args.out / "workers.json").write_text(json.dumps(report, indent=2, default=str))
