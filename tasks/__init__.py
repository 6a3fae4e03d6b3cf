"""Prefect tasks: thin wrappers around aesq's plain functions, with retries on the decorator."""

from collections.abc import Callable
from typing import Any, TypedDict

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from aesq.core.config import ConfigurationError

# Errors a retry cannot fix: bad configuration or arguments (an unknown model or pool, a missing bucket or
# folder, refused credentials, a device torch does not have), missing model weights.
# Everything else (network, database) is retried.
_PERMANENT = (ConfigurationError, FileNotFoundError)


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry unless the failure is one a retry cannot fix."""
    try:
        state.result()
    except _PERMANENT:
        return False
    except Exception:
        return True
    return True


class RetryOptions(TypedDict):
    """The retry options of every aesq task, typed so the `@task(**RETRY)` calls are checked."""

    retries: int
    retry_delay_seconds: list[float]
    retry_condition_fn: Callable[[Task[..., Any], TaskRun, State[Any]], bool]


RETRY: RetryOptions = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_condition_fn": is_transient}
