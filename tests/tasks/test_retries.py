"""Tasks retry transient failures and give up at once on errors a retry cannot fix."""

from __future__ import annotations

from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from aesq.core.config import get_settings
from aesq.tasks.ingest import discover_objects

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _attempts(source: str) -> tuple[bool, int]:
    """Run discovery once in a flow; whether it failed, and how many times the task ran."""
    task = discover_objects.with_options(retry_delay_seconds=0)

    @flow
    def probe() -> tuple[bool, UUID]:
        state = task(source, return_state=True)
        return state.is_failed(), state.state_details.task_run_id

    failed, task_run_id = probe()
    with get_client(sync_client=True) as client:
        return failed, client.read_task_run(task_run_id).run_count


def test_bad_source_fails_without_retries(settings, tmp_path):
    assert _attempts(str(tmp_path / "missing-folder")) == (True, 1)


def test_unreachable_database_is_retried(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("AESQ_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    assert _attempts(str(tmp_path)) == (True, 4)
