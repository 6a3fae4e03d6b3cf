"""Tasks that score assets: in the flow's process, or on the workers of the configured scoring pools.

A pool's workers (`aesq worker --pool NAME`, one per GPU) are Prefect task workers serving that
pool's own task: they keep their models loaded across batches, and each holds a Prefect global
concurrency limit of one slot while its models run, so one batch at a time uses its GPU while the
next batches are fetched, decoded and preprocessed on CPU threads.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from prefect import Task, task
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext

from aesq.core import scoring
from aesq.core.config import Settings, get_settings
from aesq.tasks import RETRY


@task(name="claim-assets", **RETRY)
def claim_assets() -> list[int]:
    """Claim the next batch of pending assets for this worker.

    Returns:
        Asset ids; empty when none is free.
    """
    return scoring.claim_batch(get_settings())


def _settings(scorers: list[str] | None) -> Settings:
    """The settings, with the run's own scorers when it names them (e.g. `aesq bench labels` adds one)."""
    settings = get_settings()
    return settings if scorers is None else settings.model_copy(update={"scorers": scorers})


@task(name="claim-backfill", **RETRY)
def claim_backfill(after: int, scorers: list[str] | None = None) -> list[int]:
    """Claim the next batch of scored assets lacking a model enabled since, for this worker.

    Args:
        after: only assets with greater ids (where this run's previous backfill claim ended).
        scorers: the run's scorers, when not the configured ones.

    Returns:
        Asset ids; empty when none is left.
    """
    return scoring.claim_backfill(_settings(scorers), after)


@task(name="others-scoring", **RETRY)
def others_scoring(source: str | None = None) -> bool:
    """Whether other workers still hold claims on assets (of `source` only, when given)."""
    return scoring.others_scoring(get_settings(), source)


@task(name="release-assets", **RETRY)
def release_assets(asset_ids: list[int]) -> None:
    """Give back the claims on assets this run could not finish (deferred, unreadable), for the next run."""
    scoring.release(asset_ids, get_settings())


@task(name="score-assets", **RETRY)
def score_assets(asset_ids: list[int], scorers: list[str] | None = None) -> scoring.BatchOutcome:
    """Score one batch with every enabled scorer and embedder and store the results.

    Without scoring pools the models run here; with pools, every pool's workers score the batch with
    their models and this task waits for them.

    Args:
        asset_ids: ids of one batch; ids that are not pending any more are skipped.
        scorers: the run's scorers, when not the configured ones.

    Returns:
        How many assets were scored and how many failed.
    """
    settings = _settings(scorers)
    if not settings.pools:
        return scoring.score_assets(asset_ids, settings)
    with scoring.keep_claimed(asset_ids, settings):
        futures = [pool_task(pool).delay(asset_ids) for pool in settings.pools]
        unfinished = {i for future in futures for i in future.result(timeout=settings.pool_wait_seconds).unfinished}
    scoring.end_claims(asset_ids, unfinished, settings)
    return scoring.batch_outcome(asset_ids, settings, tuple(sorted(unfinished)))


def gpu_slot_name(worker: str) -> str:
    """The global concurrency limit that gives worker `worker` one scoring slot."""
    return f"aesq-slot:{worker}"


def run_own_result(context: TaskRunContext, parameters: dict) -> str:
    """A result key of the task run itself, so no run is ever answered from another's cache.

    A task worker turns "no caching" into Prefect's default cache key (inputs + code + flow run), which
    is the same for every pool handed the same batch: a second pool would take the first pool's result
    and never run its models.
    """
    return f"aesq-pool-run-{context.task_run.id}"


def worker_slot(worker: str | None) -> Callable[[], AbstractContextManager]:
    """What a pool task holds while its models run: worker `worker`'s single slot (nothing when not on a worker)."""
    if worker is None:
        return nullcontext
    return lambda: concurrency(gpu_slot_name(worker), occupy=1, strict=True)


def pool_task(
    pool: str, device: str | None = None, worker: str | None = None
) -> Task[[list[int]], scoring.BatchOutcome]:
    """The task that pool `pool`'s workers serve and flows hand batches to.

    Args:
        pool: scoring pool name from the settings.
        device: torch device of the worker serving it (the pool's device when None).
        worker: the worker's name, whose global concurrency slot is held while the models run;
            None when the task is only being handed batches.

    Returns:
        A task keyed by the pool name, so only that pool's workers pick its runs up.
    """

    def score_on_pool(asset_ids: list[int]) -> scoring.BatchOutcome:
        """Score one batch with this pool's models, holding the worker's slot while they run."""
        return scoring.score_assets(
            asset_ids, get_settings().for_pool(pool, device), model_slot=worker_slot(worker), own_claims=False
        )

    # Prefect keys a task by its function's name and code: the pool in the name keeps pools apart.
    score_on_pool.__qualname__ = f"score_on_pool_{pool}"
    return task(score_on_pool, name=f"score-assets-{pool}", persist_result=True, cache_key_fn=run_own_result, **RETRY)
