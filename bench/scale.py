"""Scale benchmark: how aesq's costs grow with the size of a source.

`discovery`: for sources of 10k, 100k and 1M keys (a folder of empty `.png` files, 1,000 per directory),
already known to the database, it times `aesq.core.discovery.discover` in a fresh subprocess each, reporting
wall time and peak RSS (the kernel's VmHWM) during the discovery and over the whole process:

1. full listing, nothing new (the source is in `ordered_sources` but has no cursor yet: this listing
   sets it);
2. full listing with 1 % new files spread over the existing directories (checks that exactly those were
   queued, then records them as assets so later runs find nothing new);
3. ordered-source poll after the cursor, nothing new;
4. ordered-source poll with 1 % new files in a directory that sorts after every existing key (checks
   that exactly those were listed and queued).

The keys are made known by COPYing asset rows straight into `assets` (status `scored`, one distinct
fake SHA-256 per key, the ETag the folder listing gives): scoring a million empty files is not the point.
Each size gets a fresh database on an embedded Postgres the benchmark starts (or, with `--database-url`
/ `AESQ_DATABASE_URL`, that database, migrated, shared by the sizes).

    .venv/bin/python bench/scale.py discovery                           # 10k, 100k, 1M (about 15 min here)
    .venv/bin/python bench/scale.py discovery --sizes 10000 --new-share 0.01

Results are printed (a Markdown table) and written to `bench/out/scale.json`.

`workers`: 1, 2 and 4 concurrent `aesq run` on one S3 source, with the work each round did (see
bench/workers.py):

    .venv/bin/python bench/scale.py workers --images 300 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import memory  # bench/memory.py, beside this file
import workers as workers_part  # bench/workers.py, beside this file

PER_DIRECTORY = 1000


def parse_args() -> argparse.Namespace:
    """The command line: one subcommand per part of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    part = parts.add_parser("discovery", help="discovery time and peak memory at 10k, 100k and 1M keys")
    part.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated key counts")
    part.add_argument("--new-share", type=float, default=0.01, help="share of new keys in the runs with new keys")
    part.add_argument(
        "--page-size", type=int, default=None, help="discovery page (default aesq.core.discovery.PAGE_SIZE)"
    )
    part.add_argument(
        "--database-url",
        default=os.environ.get("AESQ_DATABASE_URL"),
        help="use this database instead of starting an embedded Postgres",
    )
    part.add_argument("--tmp", type=Path, default=None, help="where the temporary folder goes")
    part.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="folder for scale.json")
    once = parts.add_parser("discover-once", help="(internal) one discovery, measured, printed as JSON")
    once.add_argument("source")
    once.add_argument("--page-size", type=int, default=None)
    once.add_argument("--list-only", action="store_true", help="time the bare listing, no database")
    workers_part.add_arguments(parts.add_parser("workers", help="1, 2 and 4 concurrent `aesq run` on one source"))
    return parser.parse_args()


# --- discovery ----------------------------------------------------------------------------------


def make_source(root: Path, count: int) -> None:
    """A folder of `count` empty image files."""
    for index in range(count):
        if index % PER_DIRECTORY == 0:
            (root / f"d{index // PER_DIRECTORY:04d}").mkdir(parents=True)
        os.close(
            os.open(root / f"d{index // PER_DIRECTORY:04d}" / f"img-{index:07d}.png", os.O_CREAT | os.O_WRONLY, 0o644)
        )


def add_interleaved(root: Path, count: int, total: int) -> set[str]:
    """`count` new files spread evenly over the existing directories (they sort among the known keys)."""
    keys = set()
    for number in range(count):
        index = number * total // count
        key = f"d{index // PER_DIRECTORY:04d}/img-{index:07d}-new.png"
        os.close(os.open(root / key, os.O_CREAT | os.O_WRONLY, 0o644))
        keys.add(key)
    return keys


def add_after(root: Path, count: int) -> set[str]:
    """`count` new files in a directory that sorts after every existing key (an ordered source's arrivals)."""
    keys = set()
    for index in range(count):
        key = f"e-new/{index // PER_DIRECTORY:04d}/img-{index:07d}.png"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(root / key, os.O_CREAT | os.O_WRONLY, 0o644))
        keys.add(key)
    return keys


def seed_assets(engine, root: Path) -> int:
    """Make every file of the folder a known (scored) asset by COPY, streamed from the folder listing."""
    from aesq.core.storage import FolderSource

    source = FolderSource(root)
    rows = 0
    with engine.begin() as connection:
        cursor = connection.connection.driver_connection.cursor()
        columns = "storage, bucket, key, sha256, etag, size_bytes, source_kind, status, scored_at"
        with cursor.copy(f"COPY assets ({columns}) FROM STDIN") as copy:
            for item in source.list():
                sha = hashlib.sha256(f"{source.bucket}/{item.key}".encode()).hexdigest()
                copy.write_row(("file", source.bucket, item.key, sha, item.etag, item.size, "crawled", "scored", "now"))
                rows += 1
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE assets")
    return rows


def record_queue(engine, root: Path) -> set[str]:
    """The queued keys of this folder, which then become known assets (as ingest would make them)."""
    import sqlalchemy as sa

    with engine.begin() as connection:
        keys = set(
            connection.execute(
                sa.text("SELECT key FROM ingest_queue WHERE storage = 'file' AND bucket = :bucket"),
                {"bucket": str(root)},
            ).scalars()
        )
        connection.execute(
            sa.text(
                """
            INSERT INTO assets (storage, bucket, key, sha256, etag, size_bytes, source_kind, status, scored_at)
            SELECT storage, bucket, key, encode(sha256(convert_to(bucket || '/' || key, 'UTF8')), 'hex'), etag, 0,
                   'crawled', 'scored', now()
            FROM ingest_queue WHERE storage = 'file' AND bucket = :bucket
            """
            ),
            {"bucket": str(root)},
        )
        connection.execute(
            sa.text("DELETE FROM ingest_queue WHERE storage = 'file' AND bucket = :bucket"), {"bucket": str(root)}
        )
    return keys


def _status_mb(field: str) -> float:
    """A figure of /proc/self/status (VmRSS, VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def discover_once(args: argparse.Namespace) -> None:
    """Child process: one discovery of `args.source` with the environment's settings (or, with --list-only,
    the bare folder listing); prints JSON. The peak is the kernel's VmHWM, reset just before (so imports
    do not count) and read after; the process's peak counts the imports too. (`ru_maxrss` would not do:
    a child inherits its parent's at fork.)"""
    from aesq.core import discovery
    from aesq.core.config import get_settings
    from aesq.core.database import get_engine
    from aesq.core.storage import open_source

    settings = get_settings()
    with get_engine(settings).connect() as connection:  # the pool's first connection, outside the measure
        connection.exec_driver_sql("SELECT 1")
    before, imports_peak = _status_mb("VmRSS"), _status_mb("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    started = time.perf_counter()
    if args.list_only:
        listed = sum(1 for _ in open_source(args.source, settings).list())
        found = discovery.Discovered(listed=listed, queued=0, deleted=0, full=True)
    else:
        found = discovery.discover(args.source, settings, page_size=args.page_size)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": _status_mb("VmHWM"),
                "rss_before_mb": before,
                "process_peak_rss_mb": max(imports_peak, _status_mb("VmHWM")),
                "listed": found.listed,
                "queued": found.queued,
                "deleted": found.deleted,
                "full": found.full,
                "page_size": args.page_size or discovery.PAGE_SIZE,
            }
        )
    )


def run_discovery(
    source: Path, database_url: str, tmp: Path, ordered: bool, page_size: int | None, list_only: bool = False
) -> dict:
    """One measured discovery in a fresh Python process."""
    env = {
        **os.environ,
        "AESQ_CONFIG": str(tmp / "absent.toml"),
        "AESQ_DATABASE_URL": database_url,
        "AESQ_DATA_DIR": str(tmp / "aesq"),
        "AESQ_ORDERED_SOURCES": str(source) if ordered else "",
    }
    command = [sys.executable, str(Path(__file__).resolve()), "discover-once", str(source)]
    if page_size:
        command += ["--page-size", str(page_size)]
    if list_only:
        command.append("--list-only")
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"discovery of {source} failed:\n{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": time.perf_counter() - started}


def fresh_database(admin_url: str) -> str:
    """A new database on the embedded server, migrated to head; returns its URL."""
    from aesq.core import database
    from aesq.core.config import Settings

    url = memory.fresh_database(admin_url)
    database.upgrade(settings=Settings(database_url=url))
    return url


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"check failed: {message}")


def discovery_part(args: argparse.Namespace) -> None:
    """Build each source, make it known, and measure the four discoveries."""
    import sqlalchemy as sa

    from aesq.core import database
    from aesq.core.config import Settings

    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aesq-scale-", dir=args.tmp)))
        if args.database_url:
            database.upgrade(settings=Settings(database_url=args.database_url))
        else:
            from spine import start_postgres

            admin_url = start_postgres(stack, tmp)
        for size in sizes:
            url = args.database_url or fresh_database(admin_url)
            engine = sa.create_engine(url)
            root = tmp / f"keys-{size}"
            started = time.perf_counter()
            make_source(root, size)
            made = time.perf_counter() - started
            started = time.perf_counter()
            check(seed_assets(engine, root) == size, "every file became an asset")
            seeded = time.perf_counter() - started
            print(f"{size:,} keys: files made in {made:.0f} s, asset rows copied in {seeded:.0f} s", flush=True)
            new = max(1, round(size * args.new_share))
            runs = {}

            runs["folder listing alone"] = run_discovery(root, url, tmp, False, args.page_size, list_only=True)
            runs["full, 0 new"] = run_discovery(root, url, tmp, ordered=True, page_size=args.page_size)
            check(runs["full, 0 new"]["queued"] == 0 and runs["full, 0 new"]["listed"] == size, "nothing new")

            interleaved = add_interleaved(root, new, size)
            runs["full, 1% new"] = run_discovery(root, url, tmp, ordered=False, page_size=args.page_size)
            check(record_queue(engine, root) == interleaved, "exactly the new keys were queued")
            check(runs["full, 1% new"]["queued"] == new, "the count of queued keys is the new ones'")

            runs["ordered poll, 0 new"] = run_discovery(root, url, tmp, ordered=True, page_size=args.page_size)
            check(not runs["ordered poll, 0 new"]["full"] and runs["ordered poll, 0 new"]["listed"] == 0, "poll")

            after = add_after(root, new)
            runs["ordered poll, 1% new"] = run_discovery(root, url, tmp, ordered=True, page_size=args.page_size)
            poll = runs["ordered poll, 1% new"]
            check(not poll["full"] and poll["listed"] == new and poll["queued"] == new, "a poll lists only the new")
            check(record_queue(engine, root) == after, "exactly the arrivals were queued")
            engine.dispose()
            for name, run in runs.items():
                print(
                    f"  {name:22} {run['seconds']:7.2f} s  peak RSS {run['peak_rss_mb']:6.1f} MB "
                    f"(before {run['rss_before_mb']:.1f}, process {run['process_peak_rss_mb']:.1f})  "
                    f"listed {run['listed']:,} queued {run['queued']:,}",
                    flush=True,
                )
            results.append({"keys": size, "new": new, "files_seconds": made, "seed_seconds": seeded, "runs": runs})
            shutil.rmtree(root)

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(["bench/scale.py", *sys.argv[1:]]),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=2))
    print(markdown(results))


def markdown(results: list[dict]) -> str:
    """The figures as the BENCHMARKS.md table."""
    header = "| keys | run | listed | queued | time (s) | peak RSS during it (MB) | RSS before (MB) | process peak RSS (MB) |"
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for name, run in result["runs"].items():
            lines.append(
                f"| {result['keys']:,} | {name} | {run['listed']:,} | {run['queued']:,} | {run['seconds']:.2f} "
                f"| {run['peak_rss_mb']:.1f} | {run['rss_before_mb']:.1f} | {run['process_peak_rss_mb']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.part == "discovery":
        discovery_part(args)
    elif args.part == "discover-once":
        discover_once(args)
    elif args.part == "workers":
        workers_part.run(args)


if __name__ == "__main__":
    main()
