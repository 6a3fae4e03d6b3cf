"""Smoke test of bench/gpu_scorer.py: the tiny models on CPU, through the real scorer code paths."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_cpu_run_prints_both_tables_and_writes_results(tmp_path):
    command = [
        sys.executable, str(ROOT / "bench" / "gpu_scorer.py"), "--config", "tiny", "--device", "cpu",
        "--batch-sizes", "1,2", "--iters", "1", "--warmup", "0", "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("internvl", "laion"):
        assert f"== {name}:" in done.stdout
    assert "e2e img/s" in done.stdout and "max|b-s|" in done.stdout

    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert results["config"] == "tiny" and results["device"].startswith("cpu")
    assert results["torch"] and results["transformers"] and results["date"] and "gpu_scorer.py" in results["command"]
    assert set(results["models"]) == {"internvl", "laion"}
    internvl = results["models"]["internvl"]
    assert internvl["image_tokens"] == 256 and internvl["vit_tokens"] == 1025
    assert 400 < internvl["prompt_tokens"] < 650  # 256 image tokens + the ArtiMuse chat prompt
    assert results["models"]["laion"]["vit_tokens"] == 257
    for name, model in results["models"].items():
        assert model["flops_per_image"] > 0 and model["flop_formula"].startswith("FLOP/img")
        rows = model["per_batch"]
        assert [row["batch_size"] for row in rows] == [1, 2], name
        for row in rows:
            for key in ("img_per_s", "forward_img_per_s", "tokens_per_s", "tflops_per_s", "mfu"):
                assert math.isfinite(row[key]) and row[key] > 0, (name, key, row)
            assert row["peak_memory_gib"] is None  # CPU
            assert math.isfinite(row["max_abs_batched_minus_single"])
            assert row["max_abs_batched_minus_single"] <= row["tolerance"] <= 1e-3, (name, row)
            assert row["within_tolerance"]
