"""Scoring pools: `aesq worker --pool` processes score the flows' batches through Prefect, on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.results import ResultRecord
from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH

from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.flows.followup import defects_flow
from aesq.flows.spine import run_flow
from aesq.tasks.score import gpu_slot_name
from tests.helpers import jpeg_bytes, noise_image, put, wait_for_slot, write_tiny_ernie

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))
POOLS = {
    "quality": {"scorers": ["technical"], "device": "cpu"},
    "vectors": {"embedders": ["efficientnet-lite0"], "device": "cpu"},
    "vlm": {"scorers": ["ernie-aes"], "device": "cpu"},  # a tiny random model in the published layout
}


@pytest.fixture
def pool_workers(settings, monkeypatch, tmp_path) -> Iterator[dict[str, Path]]:
    """One `aesq worker --pool` process per pool, against the test harness's Prefect API."""
    monkeypatch.setenv("AESQ_POOLS", json.dumps(POOLS))
    monkeypatch.setenv("AESQ_WEIGHTS_DIR", str(write_tiny_ernie(tmp_path / "weights")))
    monkeypatch.setenv("AESQ_CRITIQUE_ASPECTS", "Technical Execution")
    monkeypatch.setenv("AESQ_CRITIQUE_MAX_NEW_TOKENS", "3")
    monkeypatch.setenv("AESQ_POOL_WAIT_SECONDS", "60")
    get_settings.cache_clear()
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    workers, logs = [], {}
    for pool in POOLS:
        logs[pool] = tmp_path / f"{pool}.log"
        command = [AESQ, "worker", "--pool", pool, "--name", f"test-{pool}"]
        workers.append(subprocess.Popen(command, env=env, stdout=logs[pool].open("w"), stderr=subprocess.STDOUT))
    try:
        for pool, worker in zip(POOLS, workers):
            wait_for_slot(gpu_slot_name(f"test-{pool}"), worker, logs[pool])
        yield logs
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(30)


def test_pool_workers_score_every_batch_with_models_loaded_once(settings, pool_workers, s3_client, bucket, monkeypatch):
    storage, started = Path(PREFECT_LOCAL_STORAGE_PATH.value()), time.time()
    for index in range(6):
        put(s3_client, bucket, f"generated/sdxl/1.0/{index}.jpg", jpeg_bytes(noise_image(index)))
    put(s3_client, bucket, "generated/sdxl/1.0/broken.jpg", b"not an image")
    run_flow(f"s3://{bucket}/")
    for index in range(6, 9):
        put(s3_client, bucket, f"generated/sdxl/1.1/{index}.jpg", jpeg_bytes(noise_image(index)))
    run_flow(f"s3://{bucket}/")

    with get_engine(settings).connect() as connection:
        counts = connection.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM assets WHERE status = 'scored'), "
                "(SELECT count(*) FROM scores WHERE scorer = 'technical'), "
                "(SELECT count(*) FROM embeddings WHERE embedder = 'efficientnet-lite0'), "
                "(SELECT count(*) FROM scores WHERE scorer = 'ernie-aes'), "
                "(SELECT error FROM assets WHERE status = 'failed')"
            )
        ).one()
    assert counts[:4] == (9, 9, 9, 9) and "image" in counts[4]

    # The VLM pool's worker also writes the critiques of the low scorers (here: all of them).
    monkeypatch.setenv("AESQ_DEFECT_RULES", '{"ernie-aes": {"below": 101}}')
    get_settings.cache_clear()
    defects_flow()
    with get_engine(settings).connect() as connection:
        critics = connection.execute(sa.text("SELECT critic FROM critiques")).scalars().all()
    assert critics == ["ernie-aes"] * 9

    # Every batch ran as a task run of each pool's own task, on its worker process.
    with get_client(sync_client=True) as client:
        for pool in POOLS:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"score-assets-{pool}"))
            )
            assert len(runs) >= 3 and all(run.state.is_completed() for run in runs)
            critique_runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"critique-{pool}"))
            )
            assert bool(critique_runs) == (pool == "vlm") and all(run.state.is_completed() for run in critique_runs)
            limit = client.read_global_concurrency_limit_by_name(gpu_slot_name(f"test-{pool}"))
            assert limit.limit == 1 and limit.active_slots == 0
    # What Prefect persisted to hand the batches over (parameters, and the context of the run handing them over)
    # never holds the settings' secrets.
    secret = settings.s3_secret_key.get_secret_value().encode()
    handed = [path for path in (storage / "parameters").iterdir() if path.stat().st_mtime >= started]
    records = [ResultRecord.deserialize(path.read_bytes()).result for path in handed]
    assert records and not [record for record in records if secret in cloudpickle.dumps(record)]
    # Each worker loaded its models once, for all of those batches.
    quality, vectors = pool_workers["quality"].read_text(), pool_workers["vectors"].read_text()
    assert quality.count("loaded scorer technical on cpu") == 1 and "loaded embedder" not in quality, quality
    assert vectors.count("loaded embedder efficientnet-lite0 on cpu") == 1 and "loaded scorer" not in vectors, vectors


def test_unknown_pool_is_a_one_line_error(settings, monkeypatch):
    monkeypatch.setenv("AESQ_POOLS", json.dumps(POOLS))
    result = subprocess.run([AESQ, "worker", "--pool", "gpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no scoring pool 'gpu' in the settings (configured: quality, vectors, vlm)" in result.stderr
