"""The chain on Prefect's test harness: a completed ingest leads to scoring, then aggregation and defect
analysis, through the deployments `aesq worker` serves and their event triggers — no manual step."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa
from prefect.deployments import run_deployment

from aesq.core.database import get_engine
from tests.helpers import flow_runs, free_port, jpeg_bytes, kubernetes_probe, noise_image

pytestmark = pytest.mark.slow


def test_completed_ingest_triggers_scoring_then_aggregation(settings, serve_chain, tmp_path):
    folder = tmp_path / "images"
    for index in range(3):
        path = folder / "generated" / "sdxl" / "1.0" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(noise_image(index, 96)))
    runner_port = free_port()  # Prefect's runner health, as deploy/kubernetes's flows worker enables it
    chain = serve_chain(
        AESQ_SOURCES=str(folder),
        AESQ_POLL_INTERVAL_SECONDS="3600",
        PREFECT_RUNNER_SERVER_ENABLE="true",
        PREFECT_RUNNER_SERVER_PORT=str(runner_port),
    )
    run_deployment("aesq-ingest/ingest-0", timeout=0)  # what the interval schedule does
    chain.wait(lambda: ("aesq-after-scoring", "COMPLETED") in flow_runs(), "aggregation and defects")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert subprocess.run(kubernetes_probe("base/worker.yaml", probe, runner_port)).returncode == 0
    assert subprocess.run(kubernetes_probe("base/worker.yaml", "livenessProbe", free_port())).returncode != 0
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM assets WHERE status = 'scored'")).scalar() == 3
        assert connection.execute(sa.text("SELECT count FROM version_stats")).scalars().all() == [3]
    runs = flow_runs()
    assert ("aesq-ingest", "COMPLETED") in runs and ("aesq-score", "COMPLETED") in runs, runs


def test_a_bucket_event_runs_the_s3_sources_ingest_without_listing(settings):
    from aesq.flows.deployments import deployments
    from aesq.flows.events import OBJECT_CREATED, bucket_resource

    served = deployments(settings.model_copy(update={"sources": ["s3://images/generated/", "/srv/images"]}))
    s3_ingest, folder_ingest = (next(d for d in served if d.name == f"ingest-{index}") for index in (0, 1))
    [trigger] = s3_ingest.triggers
    assert trigger.expect == {OBJECT_CREATED}
    assert trigger.match.model_dump() == {"prefect.resource.id": bucket_resource("images")}
    assert trigger.parameters == {"source": "s3://images/generated/", "listing": False}
    assert s3_ingest.parameters == {"source": "s3://images/generated/"}  # the interval runs list the bucket
    assert folder_ingest.triggers == []
