"""Scoring pools across "hosts": a flow and two pool workers as processes that share nothing but Postgres, the S3
server and the Prefect server (each its own home, Prefect home and data folder), handing batches over through
AESQ_RESULT_STORAGE on S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.settings import PREFECT_API_URL

from aesq.core.database import get_engine
from aesq.core.storage import BatchUnread
from aesq.tasks.score import gpu_slot_name, hand_to_pools
from tests.helpers import AESQ, KUBERNETES, free_port, jpeg_bytes, noise_image, put, wait_for_slot

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

IMAGES = 16
WORKERS = ("host-a", "host-b")


def host_environment(home: Path, result_storage: str) -> dict[str, str]:
    """The environment of one host: the test's AESQ_* settings, its own home, Prefect home and data folder, the
    shared Prefect API, and no other Prefect setting of this process (its local storage path least of all)."""
    home.mkdir(parents=True)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_")}
    return environment | {
        "HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "AESQ_DATA_DIR": str(home / "data"),
        "AESQ_POOLS": json.dumps({"gpu": {"scorers": ["technical"], "device": "cpu"}}),
        "AESQ_RESULT_STORAGE": result_storage,
        "AESQ_BATCH_SIZE": "2",
        "AESQ_POOL_WAIT_SECONDS": "120",
    }


def answer_when_listening(url: str) -> httpx.Response:
    """GET `url` once its port opens (a worker opens it a moment after claiming its slot), as a startup probe waits."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(url, timeout=30)
        except httpx.ConnectError:
            assert time.monotonic() < deadline, f"nothing listens at {url}"
            time.sleep(0.5)


@pytest.fixture
def results_bucket(s3_client) -> str:
    """A bucket of its own for Prefect's handed-over parameters and results."""
    name = f"results-{uuid.uuid4().hex[:10]}"
    s3_client.make_bucket(name)
    return name


@pytest.fixture
def hosts(settings, results_bucket, tmp_path) -> Iterator[dict[str, tuple[int, subprocess.Popen]]]:
    """Two pool workers of pool `gpu`, each on its own "host"; yields the health port and process of each."""
    started, ports = {}, {name: free_port() for name in WORKERS}
    for name in WORKERS:
        environment = host_environment(tmp_path / name, f"s3://{results_bucket}/prefect")
        log = tmp_path / f"{name}.log"
        command = [
            AESQ,
            "worker",
            "--pool",
            "gpu",
            "--name",
            name,
            "--prefetch",
            "1",
            "--health-port",
            str(ports[name]),
        ]
        with log.open("w") as output:
            process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
        started[name] = (ports[name], process)
    try:
        for name, (_, process) in started.items():
            wait_for_slot(gpu_slot_name(name), process, tmp_path / f"{name}.log")
        yield started
    finally:
        for _, process in started.values():
            process.terminate()
            process.wait(30)


def test_flow_and_two_pool_workers_on_separate_hosts_score_every_batch_once(
    settings, hosts, s3_client, bucket, results_bucket, tmp_path
):
    # Once the models are loaded, each worker answers the readiness probe of deploy/kubernetes's pool workers.
    (pool_workers,) = yaml.safe_load_all((KUBERNETES / "gpu-pool" / "deployment.yaml").read_text())
    readiness = pool_workers["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    for port, _ in hosts.values():
        answer = answer_when_listening(f"http://127.0.0.1:{port}{readiness['path']}")
        assert (answer.status_code, answer.json()) == (200, {"status": "ok"})

    for index in range(IMAGES):
        put(s3_client, bucket, f"generated/sdxl/1.0/{index:02d}.jpg", jpeg_bytes(noise_image(index)))
    flow_host = tmp_path / "host-flow"
    flow = subprocess.Popen(
        [AESQ, "run", f"s3://{bucket}/"],
        env=host_environment(flow_host, f"s3://{results_bucket}/prefect") | {"COLUMNS": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = flow.communicate(timeout=600)
    assert flow.returncode == 0, output

    with get_engine(settings).connect() as connection:
        statuses = dict(connection.execute(sa.text("SELECT status, count(*) FROM assets GROUP BY status")).all())
        scores = connection.execute(sa.text("SELECT count(*) FROM scores WHERE scorer = 'technical'")).scalar_one()
        work = connection.execute(
            sa.text("SELECT split_part(worker, ':', 2)::int, stage, sum(items) FROM work_log GROUP BY 1, 2")
        ).all()
    assert statuses == {"scored": IMAGES} and scores == IMAGES
    # The flow read each image once (to ingest it); each was then read and scored by exactly one of the two pool
    # workers, and each of them took batches.
    names = {process.pid: name for name, (_, process) in hosts.items()} | {flow.pid: "flow"}
    scored_by = {names.get(pid, f"pid {pid}"): items for pid, stage, items in work if stage == "model:technical"}
    read_by = {names.get(pid, f"pid {pid}"): items for pid, stage, items in work if stage == "fetch"}
    assert set(scored_by) == set(WORKERS) and sum(scored_by.values()) == IMAGES, scored_by
    assert read_by == scored_by | {"flow": IMAGES}, read_by
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="score-assets-gpu")))
    assert runs and all(run.state.is_completed() for run in runs)

    # What was handed over went through the S3 result storage: nothing to any host's local Prefect storage, and
    # nothing there holds the settings' secrets.
    handed = [item.object_name for item in s3_client.list_objects(results_bucket, prefix="prefect/", recursive=True)]
    assert len(handed) >= 2 * len(runs), handed  # each run's parameters and its result
    for home in [flow_host, *(tmp_path / name for name in WORKERS)]:
        assert not (home / ".prefect" / "storage").exists()
    secret = settings.s3_secret_key.get_secret_value().encode()
    assert not [key for key in handed if secret in s3_client.get_object(results_bucket, key).read()]

    # A flow that keeps what it hands over in its own local storage (this process's, unlike the workers'): the
    # worker cannot read the batch and deletes the run, and the flow says so (after its wait, it would time out).
    with pytest.raises(BatchUnread) as unread:
        hand_to_pools.fn([1], ["gpu"], 120, None)
    assert str(unread.value) == (
        "a worker of pool 'gpu' could not read the batch handed to it: give the flows and every pool worker the "
        "same AESQ_RESULT_STORAGE (an s3:// location or a folder all of them mount), or see the worker's log"
    )


def test_a_health_port_in_use_is_a_one_line_error(settings, results_bucket, tmp_path):
    environment = host_environment(tmp_path / "host", f"s3://{results_bucket}/prefect")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [AESQ, "worker", "--pool", "gpu", "--health-port", str(port)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"aesq: error: cannot answer health probes on port {port} (Address already in use)")


def test_result_storage_without_its_bucket_is_a_one_line_error(settings, bucket, tmp_path):
    environment = host_environment(tmp_path / "host", "s3://no-such-results/prefect")
    result = subprocess.run(
        [AESQ, "worker", "--pool", "gpu"], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("aesq: error: AESQ_RESULT_STORAGE: s3://no-such-results/: no such bucket")
