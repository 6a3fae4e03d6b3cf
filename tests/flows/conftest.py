"""What the flow tests that serve deployments share: a Prefect API emptied of earlier tests' deployments,
triggers and runs, and an `aesq worker` process serving the chain against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

AESQ = shutil.which("aesq", path=str(Path(sys.executable).parent))
CHAIN = ("aesq-ingest/ingest-0", "aesq-score/score", "aesq-after-scoring/after-scoring", "aesq-report/nightly")


def _clear_prefect_api() -> None:
    """Delete every deployment, automation and flow run, so served names and triggers start fresh."""
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            client.delete_automation(automation.id)
        for deployment in client.read_deployments():
            client.delete_deployment(deployment.id)
        for run in client.read_flow_runs():
            client.delete_flow_run(run.id)


def flow_runs() -> list[tuple[str, str]]:
    """(flow name, state) of every flow run of this test."""
    with get_client(sync_client=True) as client:
        names = {flow.id: flow.name for flow in client.read_flows()}
        return [(names[run.flow_id], run.state.type.value) for run in client.read_flow_runs()]


def deployment_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except Exception:
            return False


class ServedChain:
    """A running `aesq worker` (the flows' deployments) and a way to wait on what it does."""

    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process, self.log = process, log

    def wait(self, condition: Callable[[], bool], what: str, seconds: float = 240) -> None:
        """Poll `condition` until it holds; fail with the worker's log otherwise."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()}")
            if condition():
                return
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {what}: {self.log.read_text()[-3000:]}")


@pytest.fixture
def serve_chain(prefect_harness, settings, tmp_path) -> Iterator[Callable[..., ServedChain]]:
    """Start `aesq worker` with extra AESQ_* variables; waits until every deployment is registered."""
    _clear_prefect_api()
    started: list[subprocess.Popen] = []

    def start(**variables: str) -> ServedChain:
        log = tmp_path / "worker.log"
        env = {**os.environ, **variables, "PREFECT_API_URL": PREFECT_API_URL.value()}
        process = subprocess.Popen([AESQ, "worker"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        started.append(process)
        chain = ServedChain(process, log)
        chain.wait(lambda: all(map(deployment_exists, CHAIN)), "deployments", 120)
        time.sleep(3)  # the server loads the new deployments' triggers
        return chain

    yield start
    for process in started:
        process.terminate()
        process.wait(30)
    _clear_prefect_api()
