"""Tasks retry transient failures and give up at once on errors a retry cannot fix."""

from __future__ import annotations

from uuid import UUID

import pytest
from prefect import Task, flow
from prefect.client.orchestration import get_client

from aesq.core.config import Settings
from aesq.tasks.ingest import discover_objects
from aesq.tasks.score import score_assets
from tests.helpers import free_port

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _runs(task: Task, *args: object) -> tuple[bool, int]:
    """Run a task once in a flow, retrying at once; whether it failed, and how many times it ran."""

    @flow
    def probe() -> tuple[bool, UUID]:
        state = task.with_options(retry_delay_seconds=0)(*args, return_state=True)
        return state.is_failed(), state.state_details.task_run_id

    failed, task_run_id = probe()
    with get_client(sync_client=True) as client:
        return failed, client.read_task_run(task_run_id).run_count


def _attempts(source: str, settings: Settings) -> tuple[bool, int]:
    """Run discovery once in a flow; whether it failed, and how many times the task ran."""
    return _runs(discover_objects, source, settings)


def test_bad_source_fails_without_retries(settings, tmp_path):
    assert _attempts(str(tmp_path / "missing-folder"), settings) == (True, 1)


def test_unreachable_database_is_retried(settings, tmp_path):
    unreachable = settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert _attempts(str(tmp_path), unreachable) == (True, 4)


def test_an_unreachable_object_store_is_retried(settings):
    unreachable = settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{free_port()}"})
    assert _attempts("s3://images/", unreachable) == (True, 4)


def test_refused_credentials_fail_without_retries(settings, bucket, s3_checks_credentials):
    assert _attempts(f"s3://{bucket}/", settings) == (True, 1)


def test_a_device_torch_does_not_have_fails_scoring_without_retries(settings):
    import torch

    device = f"cuda:{torch.cuda.device_count()}" if torch.backends.cuda.is_built() else "cuda"
    assert _runs(score_assets, [1], settings.model_copy(update={"device": device})) == (True, 1)
