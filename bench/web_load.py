"""The dashboard under many users: N concurrent clients for S seconds over a database of 100,000 assets.

Seeds the database `bench/pages.py` seeds (20 versions of 5,000 scored assets, embeddings, defects, the aggregate's
statistics) once, then for each source tree given (default: this checkout) serves its `aesq serve` application with
uvicorn in a process of its own and lets the clients loop over a mix of pages: the leaderboard, compare pages of
random ordered pairs of versions (all 380 possible, each cold the first time it is asked for), asset pages with
their neighbours and `/api/pairs` of random pairs (served from the same kept comparisons). Records per page p50/p95/max, the errors (any status but 200, or no answer within 60 s) and the
server process's peak resident memory.

    .venv/bin/python bench/web_load.py --clients 50 --seconds 60 --tree after=/tmp/head --tree before=/tmp/base

A tree is a copy of the sources (`git archive COMMIT | tar -x -C DIR`); it is put first on the server's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pages import VERSIONS, seed

PAIRS = [(a, b) for a in range(VERSIONS) for b in range(VERSIONS) if a != b]
PAGES = {
    "leaderboard": lambda rng: "/",
    "compare (random pair)": lambda rng: "/compare?a=bench-model:v{}&b=bench-model:v{}&scorer=technical".format(
        *rng.choice(PAIRS)
    ),
    "asset page (+ neighbours)": lambda rng: f"/assets/{rng.randint(1, 1000)}",
    "pairs API (random pair)": lambda rng: (
        "/api/pairs?a=bench-model:v{}&b=bench-model:v{}&scorer=technical&limit=100".format(*rng.choice(PAIRS))
    ),
}
REQUEST_TIMEOUT_SECONDS = 60


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a source tree to serve, in order (default: this checkout)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(tree: Path, port: int, environment: dict[str, str]) -> subprocess.Popen:
    """The dashboard of `tree` in a uvicorn process of its own, once it accepts connections."""
    command = [sys.executable, "-m", "uvicorn", "--factory", "aesq.web.app:create_app", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        env={**environment, "PYTHONPATH": str(tree)},
        cwd=tree,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server of {tree} exited with status {server.returncode}") from None
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server of {tree} did not listen on port {port} within 60 s")


def resident_kib(pid: int, field: str) -> int:
    """A memory figure of a live process from /proc (VmRSS now, VmHWM its peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def load(port: int, clients: int, seconds: float) -> tuple[dict[str, list[tuple[float, str | None]]], list]:
    """Each client asks for a random page, waits for the whole answer, and asks again until the time is up; the
    timings per page, and the slowest requests with when they started (seconds into the run)."""
    import httpx

    timings: dict[str, list[tuple[float, str | None]]] = {page: [] for page in PAGES}
    slowest: list[tuple[float, float, str]] = []
    # Idle connections are dropped before uvicorn's 5 s keep-alive ends them, so none is reused as the server closes it.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=4)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as client:
        warm_up = random.Random(-1)
        for path_for in PAGES.values():  # one of each first: the server's first compare imports scipy (seconds)
            (await client.get(path_for(warm_up))).raise_for_status()
        began = time.perf_counter()
        stop_at = began + seconds

        async def one_client(number: int) -> None:
            rng = random.Random(number)
            while time.perf_counter() < stop_at:
                page = rng.choice(list(PAGES))
                start = time.perf_counter()
                try:
                    answer = await client.get(PAGES[page](rng))
                    error = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
                except httpx.HTTPError as failure:
                    error = type(failure).__name__
                timings[page].append((time.perf_counter() - start, error))
                slowest.append((time.perf_counter() - start, start - began, page))

        await asyncio.gather(*(one_client(number) for number in range(clients)))
    return timings, sorted(slowest, reverse=True)[:10]


def figures(timings: list[tuple[float, str | None]]) -> dict:
    """Count, p50, p95 and max in ms, and the errors by kind."""
    times = sorted(seconds * 1000 for seconds, _ in timings)
    errors: dict[str, int] = {}
    for _, error in timings:
        if error:
            errors[error] = errors.get(error, 0) + 1
    if not times:
        return {"requests": 0, "errors": errors}
    return {
        "requests": len(times),
        "p50_ms": round(times[len(times) // 2], 1),
        "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 1),
        "max_ms": round(times[-1], 1),
        "errors": errors,
    }


def measure(tree: Path, environment: dict[str, str], clients: int, seconds: float) -> dict:
    """One load run against a fresh server of `tree`: per page figures and the server's peak memory."""
    port = free_port()
    server = serve(tree, port, environment)
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        """Resident memory every 0.2 s, besides the kernel's own peak read at the end."""
        while not sampling.wait(0.2):
            peak[0] = max(peak[0], resident_kib(server.pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        timings, slowest = asyncio.run(load(port, clients, seconds))
        high_water = resident_kib(server.pid, "VmHWM")
    finally:
        sampling.set()
        server.terminate()
        server.wait(30)
    everything = [timing for page in timings.values() for timing in page]
    return {
        "pages": {page: figures(page_timings) for page, page_timings in timings.items()},
        "all": figures(everything),
        "server_peak_rss_mib": round(max(peak[0], high_water) / 1024, 1),
        "slowest": [
            {"page": page, "started_s": round(started, 1), "ms": round(took * 1000, 1)}
            for took, started, page in slowest
        ],
    }


def main() -> None:
    args = parse_args()
    trees = [(label, Path(folder).resolve()) for label, _, folder in (tree.partition("=") for tree in args.tree)]
    trees = trees or [("this checkout", ROOT)]
    work = Path(tempfile.mkdtemp(prefix="aesq-bench-load-"))
    os.environ.update(
        AESQ_DATA_DIR=str(work / "data"), AESQ_CONFIG=str(work / "absent.toml"), AESQ_SOURCES=str(work / "images")
    )
    os.environ.pop("AESQ_DATABASE_URL", None)
    from aesq.core import database
    from aesq.core.config import get_settings

    settings = get_settings()
    database.upgrade(settings=settings)
    try:
        began = time.perf_counter()
        seed(settings, args.assets, work / "images")
        seeded = time.perf_counter() - began
        environment = {**os.environ, "AESQ_DATABASE_URL": database.database_url(settings)}
        runs = {}
        for label, tree in trees:
            runs[label] = measure(tree, environment, args.clients, args.seconds)
            print(json.dumps({label: runs[label]}, indent=2), flush=True)
    finally:
        database.stop_embedded(settings)
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, {platform.platform()}",
        "assets": args.assets,
        "clients": args.clients,
        "seconds": args.seconds,
        "seed_seconds": round(seeded, 1),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web_load.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
