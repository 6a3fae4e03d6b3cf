"""Memory benchmark: peak memory of `aesq run` (its whole process tree) on large and on ordinary images.

Makes two folders: near-limit PNG bombs (7999x7999, one colour each: about 200 KB that decode to 64
million pixels) and ordinary photos (1024x1024 JPEGs as bench/spine.py makes them). Starts an embedded
Postgres and a Prefect server on loopback, then runs `aesq run FOLDER` as a subprocess on each folder,
for this checkout and, with --before, for an older one run with the same interpreter (e.g.
`git worktree add /tmp/aesq-before <commit>`), each on a fresh database at default settings. The
aesq process and its descendants (validation workers) are sampled every 0.1 s; the aesq process's own
peak comes from the kernel (wait4).

    .venv/bin/python bench/memory.py --before /tmp/aesq-before --out bench/out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import psutil
import sqlalchemy as sa
from PIL import Image
from spine import load_photos, prefect_environment, start_postgres, start_prefect, synthetic_jpeg

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.1


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bombs", type=int, default=32, help="how many near-limit PNGs")
    parser.add_argument("--bomb-side", type=int, default=7999, help="side of the square PNGs in pixels")
    parser.add_argument("--photos", type=int, default=1000, help="how many ordinary 1024x1024 JPEGs")
    parser.add_argument("--before", type=Path, help="an older checkout to measure the same way")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="folder for memory.json")
    return parser.parse_args()


def write_bomb(path: Path, side: int, index: int) -> None:
    """One near-limit PNG of a colour of its own (distinct bytes, so no asset is a duplicate)."""
    Image.new("RGB", (side, side), (index * 7 % 256, 255 - index * 5 % 256, 90)).save(path, "PNG")


def make_folders(tmp: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The two workloads as folders under generated/<model>/v1/."""
    bombs, photos = tmp / "bombs" / "generated" / "bombs" / "v1", tmp / "photos" / "generated" / "photos" / "v1"
    bombs.mkdir(parents=True)
    photos.mkdir(parents=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_bomb, [bombs / f"bomb-{i:02d}.png" for i in range(args.bombs)],
                      [args.bomb_side] * args.bombs, range(args.bombs)))  # fmt: skip
    sources = load_photos()
    for index in range(args.photos):
        (photos / f"photo-{index:05d}.jpg").write_bytes(synthetic_jpeg(index, 1024, sources))
    return {"bombs": tmp / "bombs", "photos": tmp / "photos"}


def fresh_database(admin_url: str) -> str:
    """A new empty database on the benchmark's server; returns its URL."""
    name = f"aesq_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) summed over the process and its descendants; PSS counts shared pages once."""
    rss = pss = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            info = member.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def measure(code: Path, folder: Path, admin_url: str, env: dict[str, str], log: Path) -> dict[str, object]:
    """`aesq run folder` with the aesq of `code` on a fresh database: peaks, time, asset counts."""
    aesq = [sys.executable, "-c", "import sys; from aesq.cli.main import main; sys.argv[0] = 'aesq'; sys.exit(main())"]
    run_env = {**env, "AESQ_DATABASE_URL": fresh_database(admin_url), "PYTHONPATH": str(code)}
    subprocess.run([*aesq, "db", "upgrade"], cwd=code, env=run_env, check=True, capture_output=True)
    start = time.perf_counter()
    with log.open("w") as output:
        child = subprocess.Popen(
            [*aesq, "run", str(folder)], cwd=code, env=run_env, stdout=output, stderr=subprocess.STDOUT
        )
    process = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        rss, pss = tree_memory(process)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - start
    engine = sa.create_engine(run_env["AESQ_DATABASE_URL"])
    with engine.connect() as connection:
        statuses = dict(connection.execute(sa.text("SELECT status, count(*) FROM assets GROUP BY status")).all())
    engine.dispose()
    return {
        "code": str(code),
        "exit_status": os.waitstatus_to_exitcode(status),
        "seconds": round(seconds, 1),
        "peak_aesq_process_rss_mb": round(usage.ru_maxrss * 1024 / 1e6),
        "peak_tree_rss_mb": round(peak_rss / 1e6),
        "peak_tree_pss_mb": round(peak_pss / 1e6),
        "assets": statuses,
        "output_tail": log.read_text(errors="replace")[-1500:],
    }


def main() -> None:
    """Make the workloads, start the services, measure each checkout on each workload, report."""
    args = parse_args()
    codes = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    results: dict[str, dict[str, object]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="aesq-memory-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"making {args.bombs} PNGs of {args.bomb_side}px and {args.photos} photos in {tmp} ...", flush=True)
        folders = make_folders(tmp, args)
        admin_url = start_postgres(stack, tmp)
        api_url = start_prefect(stack, tmp)
        env = {**os.environ, **prefect_environment(tmp), "PREFECT_API_URL": api_url,
               "AESQ_CONFIG": str(tmp / "absent.toml"), "AESQ_DATA_DIR": str(tmp / "aesq")}  # fmt: skip
        for workload, folder in folders.items():
            for label, code in codes.items():
                print(f"  {workload}, {label} ({code}) ...", flush=True)
                outcome = measure(code, folder, admin_url, env, tmp / f"{workload}-{label}.log")
                results[f"{workload}/{label}"] = outcome
                print(f"    {outcome['seconds']} s, peak aesq process {outcome['peak_aesq_process_rss_mb']} MB, tree RSS "
                      f"{outcome['peak_tree_rss_mb']} MB, tree PSS {outcome['peak_tree_pss_mb']} MB, "
                      f"exit {outcome['exit_status']}, assets {outcome['assets']}", flush=True)  # fmt: skip
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "memory_gb": round(psutil.virtual_memory().total / 1e9, 1), "python": platform.python_version()},
        "workloads": {"bombs": f"{args.bombs} PNGs {args.bomb_side}x{args.bomb_side}", "photos": f"{args.photos} JPEGs 1024x1024"},
        "results": results,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out / 'memory.json'}")


if __name__ == "__main__":
    main()
