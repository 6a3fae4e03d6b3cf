"""Tasks retry transient failures and give up at once on errors a retry cannot fix."""

from __future__ import annotations

from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from aesq.core.config import Settings
from aesq.tasks.ingest import discover_objects

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _attempts(source: str, settings: Settings) -> tuple[bool, int]:
    """Run discovery once in a flow; whether it failed, and how many times the task ran."""
    task = discover_objects.with_options(retry_delay_seconds=0)

    @flow
    def probe() -> tuple[bool, UUID]:
        state = task(source, settings, return_state=True)
        return state.is_failed(), state.state_details.task_run_id

    failed, task_run_id = probe()
    with get_client(sync_client=True) as client:
        return failed, client.read_task_run(task_run_id).run_count


def test_bad_source_fails_without_retries(settings, tmp_path):
    assert _attempts(str(tmp_path / "missing-folder"), settings) == (True, 1)


def test_unreachable_database_is_retried(settings, tmp_path):
    unreachable = settings.model_copy(update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    assert _attempts(str(tmp_path), unreachable) == (True, 4)
