"""Wall time of short `aesq` commands: the median of several runs each, with the embedded Postgres already
running and the demo sample scored in it; with `--before`, an older checkout measured the same way.

Each checkout gets its own data folder (the schema is at its own head), seeded with its own code, then each
command runs `--runs` times in a fresh interpreter (`python -c "...main()"` with the checkout on PYTHONPATH).
The servers are stopped at the end.

    git worktree add -f /tmp/wt-cli-old <commit> --detach
    .venv/bin/python bench/cli_startup.py --before /tmp/wt-cli-old --runs 7
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
COMMANDS = {
    "aesq --help": ["--help"],
    "aesq export (usage error)": ["export"],
    "aesq status": ["status"],
    "aesq compare": ["compare"],
    "aesq top -g demo-diffusion": ["top", "-g", "demo-diffusion"],
}
AESQ = "import sys; from aesq.cli.main import main; sys.argv[0] = 'aesq'; sys.exit(main())"
SEED = "from aesq.core.config import get_settings; from tests.helpers import seed_demo; seed_demo(get_settings())"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (the median is reported)")
    parser.add_argument("--before", type=Path, help="an older checkout to measure the same way")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


def _aesq(code: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`aesq ARGS` with the aesq of checkout `code`."""
    return subprocess.run(
        [sys.executable, "-c", AESQ, *args], cwd=code, env={**env, "PYTHONPATH": str(code)}, capture_output=True
    )


def measure(code: Path, data_dir: Path, runs: int) -> dict[str, object]:
    """Start and seed the checkout's embedded Postgres, then time every command `runs` times."""
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("AESQ_", "PREFECT_API"))},
        "AESQ_DATA_DIR": str(data_dir),
        "AESQ_CONFIG": str(data_dir / "absent.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    _aesq(code, env, "db", "start").check_returncode()
    try:
        _aesq(code, env, "db", "upgrade").check_returncode()
        subprocess.run([sys.executable, "-c", SEED], cwd=code, env={**env, "PYTHONPATH": str(code)}, check=True)
        medians: dict[str, float] = {}
        for name, args in COMMANDS.items():
            seconds = []
            for _ in range(runs):
                start = time.perf_counter()
                finished = _aesq(code, env, *args)
                seconds.append(time.perf_counter() - start)
                if finished.returncode not in (0, 1, 2):
                    raise RuntimeError(f"{name} ended with {finished.returncode}: {finished.stderr.decode()[-500:]}")
            medians[name] = round(statistics.median(seconds), 2)
    finally:
        _aesq(code, env, "db", "stop")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True)
    return {"code": str(code), "commit": commit.stdout.strip(), "median_seconds": medians}


def main() -> None:
    """Measure each checkout, print a table of medians, write bench/out/cli_startup.json."""
    args = parse_args()
    codes = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    results = {}
    with tempfile.TemporaryDirectory(prefix="aesq-cli-bench-") as temporary:
        for label, code in codes.items():
            results[label] = measure(code, Path(temporary) / label, args.runs)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "runs": args.runs,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cli_startup.json").write_text(json.dumps(report, indent=2))
    labels = list(results)
    print("| command | " + " | ".join(f"{label} ({results[label]['commit']})" for label in labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name in COMMANDS:
        print(
            f"| `{name}` | " + " | ".join(f"{results[label]['median_seconds'][name]:.2f} s" for label in labels) + " |"
        )


if __name__ == "__main__":
    main()
