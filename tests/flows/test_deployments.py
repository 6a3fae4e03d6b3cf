"""The chain on Prefect's test harness: a completed ingest leads to scoring, then aggregation and defect
analysis, through the deployments `aesq worker` serves and their event triggers — no manual step."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

from aesq.database import get_engine
from tests.helpers import jpeg_bytes, noise_image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))


def _wait(condition, what: str, worker: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    """Poll `condition` until it holds; fail with the worker's log otherwise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise AssertionError(f"worker exited: {log.read_text()}")
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def _version_stats(settings) -> int:
    with get_engine(settings).connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM version_stats")).scalar()


def _flow_runs() -> list[tuple[str, str]]:
    """(flow name, state) of every flow run so far."""
    with get_client(sync_client=True) as client:
        names = {flow.id: flow.name for flow in client.read_flows()}
        return [(names[run.flow_id], run.state.type.value) for run in client.read_flow_runs()]


def _deployment_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except Exception:
            return False


def test_completed_ingest_triggers_scoring_then_aggregation(settings, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    for index in range(3):
        path = folder / "generated" / "sdxl" / "1.0" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(noise_image(index, 96)))
    log = tmp_path / "worker.log"
    env = {**os.environ, "AESQ_SOURCES": str(folder), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "AESQ_POLL_INTERVAL_SECONDS": "3600"}
    worker = subprocess.Popen([AESQ, "worker"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _deployment_exists("aesq-after-scoring/after-scoring"), "deployments", worker, log, 120)
        run_deployment("aesq-ingest/ingest-0", timeout=0)  # what the interval schedule does
        _wait(lambda: ("aesq-after-scoring", "COMPLETED") in _flow_runs(), "aggregation and defects", worker, log)
    finally:
        worker.terminate()
        worker.wait(30)
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM assets WHERE status = 'scored'")).scalar() == 3
    assert _version_stats(settings) == 1
    runs = _flow_runs()
    assert ("aesq-ingest", "COMPLETED") in runs and ("aesq-score", "COMPLETED") in runs, runs
