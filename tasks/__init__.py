"""Prefect tasks: thin wrappers around aesq's plain functions, with retries on the decorator."""

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from aesq.core.scoring import UnknownModel
from aesq.core.storage import SourceError

# Errors a retry cannot fix: bad configuration or arguments, missing model weights.
# Everything else (network, database) is retried.
_PERMANENT = (SourceError, UnknownModel, FileNotFoundError)


def is_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry unless the failure is one a retry cannot fix."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except Exception:
        return True
    return True


RETRY = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_condition_fn": is_transient}
