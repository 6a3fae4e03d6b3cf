"""`aesq report` and `aesq defects` with the local Prefect server already started, against a checkout that starts
Prefect's ephemeral API in every command: median wall time of each over several runs, side by side.

Seeds a fresh data folder (embedded Postgres) with `aesq demo` of this checkout, which also starts the local
server; then times each command `--repeats` times with this checkout (or `--after`) and with `--before` (a
checkout of the commit before, e.g. `git worktree add -f /tmp/wt-prefect-old <commit> --detach`), both on that
database, each run a new process as a user would start it. Results are printed and written to `bench/out/local_prefect.json`.

    .venv/bin/python bench/local_prefect.py --before /tmp/wt-prefect-old --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["report"], ["defects"])
# The checkout on PYTHONPATH comes before the editable install's finder, so this runs that checkout's aesq.
ENTRY = "import sys; from aesq.cli.main import main; sys.argv[0] = 'aesq'; main()"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the commit before")
    parser.add_argument("--after", type=Path, default=ROOT, help="checkout with the local server (default: this one)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


def aesq(checkout: Path, args: list[str], env: dict[str, str], cwd: Path) -> float:
    """Run one aesq command of `checkout` in a new process; its wall time in seconds (it must succeed)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env={**env, "PYTHONPATH": str(checkout)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"aesq {' '.join(args)} ({checkout}) failed: {result.stderr.strip()}")
    return elapsed


def git_commit(checkout: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="aesq-bench-prefect-") as folder:
        base = Path(folder)
        env = {name: value for name, value in os.environ.items() if not name.startswith(("AESQ_", "PREFECT_"))}
        env.update(
            AESQ_DATA_DIR=str(base / "data"),
            AESQ_CONFIG=str(base / "absent.toml"),
            PREFECT_HOME=str(base / "prefect-home"),  # the ephemeral API's database, away from the user's
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # as in CI: a loaded machine is slow to start it
            DO_NOT_TRACK="1",
        )
        try:
            first = aesq(args.after, ["demo"], env, base)
            print(f"seeded with aesq demo (starts the local Prefect server): {first:.1f} s", flush=True)
            results: dict[str, dict[str, list[float]]] = {}
            for _ in range(args.repeats):  # interleaved, so a change in the machine's load touches both alike
                for command in COMMANDS:
                    for label, checkout in (("local server", args.after), ("ephemeral API", args.before)):
                        seconds = aesq(checkout, command, env, base)
                        results.setdefault(" ".join(command), {}).setdefault(label, []).append(seconds)
                        print(f"aesq {' '.join(command):8} {label:14} {seconds:5.1f} s", flush=True)
        finally:
            aesq(args.after, ["stop"], env, base)
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "commits": {"local server": git_commit(args.after), "ephemeral API": git_commit(args.before)},
        "repeats": args.repeats,
        "demo_seconds": first,
        "medians": {
            command: {label: statistics.median(times) for label, times in by_label.items()}
            for command, by_label in results.items()
        },
        "runs": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "local_prefect.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["medians"], indent=2))


if __name__ == "__main__":
    main()
