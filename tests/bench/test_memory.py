"""Smoke test of bench/memory.py: tiny workloads through `aesq run` on its own services."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_measures_both_workloads_and_writes_results(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "memory.py"), "--bombs", "1", "--bomb-side", "2100",
               "--photos", "4", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    report = json.loads((tmp_path / "memory.json").read_text())
    assert report["date"] and "memory.py" in report["command"] and report["machine"]["cpu_count"]
    assert set(report["results"]) == {"bombs/after", "photos/after"}
    for name, scored in (("bombs/after", 1), ("photos/after", 4)):
        outcome = report["results"][name]
        assert outcome["exit_status"] == 0 and outcome["assets"] == {"scored": scored}, outcome
        assert outcome["peak_aesq_process_rss_mb"] > 0
        assert 0 < outcome["peak_tree_pss_mb"] <= outcome["peak_tree_rss_mb"]
