"""Tasks that score assets: in the flow's process, or on the workers of the configured scoring pools.

A pool's workers (`aesq worker --pool NAME`, one per GPU) are Prefect task workers serving that
pool's own task: they keep their models loaded across batches, and each holds a Prefect global
concurrency limit of one slot while its models run, so one batch at a time uses its GPU while the
next batches are fetched, decoded and preprocessed on CPU threads.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext

from aesq.core import scoring
from aesq.core.config import Settings
from aesq.tasks import RETRY
from aesq.tasks.result_storage import pool_result, result_storage_block

P = ParamSpec("P")
R = TypeVar("R")


@task(name="claim-assets", **RETRY)
def claim_assets(settings: Settings, within: str | None = None) -> list[int]:
    """Claim the next batch of pending assets for this worker.

    Args:
        settings: the flow run's settings.
        within: only assets of this source, when given (a run with its own scorers scores its source only).

    Returns:
        Asset ids; empty when none is free.
    """
    return scoring.claim_batch(settings, within)


@task(name="claim-backfill", **RETRY)
def claim_backfill(after: int, settings: Settings, within: str | None = None) -> list[int]:
    """Claim the next batch of scored assets lacking a model enabled since, for this worker.

    Args:
        after: only assets with greater ids (where this run's previous backfill claim ended).
        settings: the flow run's settings, whose models are the ones wanted.
        within: only assets of this source, when given.

    Returns:
        Asset ids; empty when none is left.
    """
    return scoring.claim_backfill(settings, after, within)


@task(name="others-scoring", **RETRY)
def others_scoring(settings: Settings, source: str | None = None) -> bool:
    """Whether other workers still hold claims on assets (of `source` only, when given)."""
    return scoring.others_scoring(settings, source)


@task(name="release-assets", **RETRY)
def release_assets(asset_ids: list[int], settings: Settings) -> None:
    """Give back the claims on assets this run could not finish (deferred, unreadable), for the next run."""
    scoring.release(asset_ids, settings)


@task(name="score-assets", **RETRY)
def score_assets(asset_ids: list[int], settings: Settings) -> scoring.BatchOutcome:
    """Score one batch with every enabled scorer and embedder and store the results.

    Without scoring pools the models run here; with pools, every pool's workers score the batch with
    their models and this task waits for them (`hand_to_pools`).

    Args:
        asset_ids: ids of one batch; ids that are not pending any more are skipped.
        settings: the flow run's settings.

    Returns:
        How many assets were scored and how many failed.
    """
    if not settings.pools:
        return scoring.score_assets(asset_ids, settings)
    with scoring.keep_claimed(asset_ids, settings):
        unfinished = hand_to_pools(
            asset_ids, list(settings.pools), settings.pool_wait_seconds, result_storage_block(settings)
        )
    scoring.end_claims(asset_ids, set(unfinished), settings)
    return scoring.batch_outcome(asset_ids, settings, tuple(unfinished))


@task(name="hand-to-pools")
def hand_to_pools(asset_ids: list[int], pools: list[str], wait_seconds: float, result_storage: str | None) -> list[int]:
    """Have each pool's workers score a batch, and wait for them; returns the ids they could not finish.

    A task of its own, run inside `score_assets`: Prefect persists, with each pool task run, the parameters
    of the task run handing it over, and this one's are ids and names, never the settings (which hold secrets).
    `result_storage` is the slug of the Prefect block the pools' workers read the batch from (None: local).
    """
    futures = {pool: pool_task(pool, result_storage=result_storage).delay(asset_ids) for pool in pools}
    return sorted({i for pool, future in futures.items() for i in pool_result(future, pool, wait_seconds).unfinished})


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


@dataclass(frozen=True)
class PoolWorker:
    """A scoring pool's worker process: its settings for the pool, read once at its start-up, and its name."""

    settings: Settings
    name: str

    def slot(self) -> AbstractContextManager:
        """Hold this worker's single scoring slot (a Prefect global concurrency limit) while its models run."""
        return concurrency(gpu_slot_name(self.name), occupy=1, strict=True)

    @staticmethod
    def serving(worker: PoolWorker | None, pool: str) -> PoolWorker:
        """The worker a pool task runs on; a task built only to hand batches over has none, and never runs."""
        if worker is None:
            raise RuntimeError(f"pool {pool!r}'s tasks run only on its workers (`aesq worker --pool {pool}`)")
        return worker


def pool_task(
    pool: str, worker: PoolWorker | None = None, result_storage: str | None = None
) -> Task[[list[int]], scoring.BatchOutcome]:
    """The task that pool `pool`'s workers serve and flows hand batches to.

    Args:
        pool: scoring pool name from the settings.
        worker: the worker serving it, whose settings and slot the models run with; None when the task is
            only being handed batches.
        result_storage: slug of the Prefect block both sides keep the batch's parameters and result in
            (`aesq.tasks.result_storage`); None: Prefect's local storage.

    Returns:
        A task keyed by the pool name, so only that pool's workers pick its runs up.
    """

    def score_on_pool(asset_ids: list[int]) -> scoring.BatchOutcome:
        """Score one batch with this pool's models, holding the worker's slot while they run."""
        serving = PoolWorker.serving(worker, pool)
        return scoring.score_assets(asset_ids, serving.settings, model_slot=serving.slot, own_claims=False)

    return handed_over_task(score_on_pool, f"score-assets-{pool}", pool, result_storage)


def handed_over_task(function: Callable[P, R], name: str, pool: str, result_storage: str | None) -> Task[P, R]:
    """A task that flows hand to pool `pool`'s workers, built alike on both sides: its name (with the pool) lets
    only that pool's workers take it, its parameters and result are kept in `result_storage`, and it is never
    answered from a cache.

    Prefect keys a task by its function's qualified name and code: the pool in it keeps pools apart.
    """
    function.__qualname__ = f"{function.__name__}_{pool}"
    return task(name=name, persist_result=True, result_storage=result_storage, cache_key_fn=run_own_result, **RETRY)(
        function
    )
