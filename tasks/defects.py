"""Tasks of defect analysis: find the low scorers, analyse them in batches, have the VLM critique them."""

from prefect import Task, task

from aesq.analysis import critique, defect_analysis
from aesq.core.config import Settings
from aesq.tasks import RETRY
from aesq.tasks.result_storage import pool_result, result_storage_block
from aesq.tasks.score import PoolWorker, handed_over_task


@task(name="low-scorers", **RETRY)
def low_scorers(settings: Settings) -> list[list[int]]:
    """Find assets that defect analysis should look at.

    Returns:
        Batches of asset ids.
    """
    return defect_analysis.low_scorer_batches(settings)


@task(name="analyse-defects", **RETRY)
def analyse_defects(asset_ids: list[int], settings: Settings) -> int:
    """Run the defect detectors on one batch and store their findings.

    Args:
        asset_ids: ids of one batch of low scorers.
        settings: the flow run's settings.

    Returns:
        How many defect rows were written.
    """
    return defect_analysis.analyse_assets(asset_ids, settings)


@task(name="critique-low-scorers", **RETRY)
def critique_low_scorers(asset_ids: list[int], settings: Settings) -> int:
    """Have the VLM critic, when one is enabled, judge one batch per aspect (here, or on its scoring pool).

    Args:
        asset_ids: ids of one batch of low scorers, already analysed.
        settings: the flow run's settings.

    Returns:
        How many critiques were written (0 without a critic).
    """
    critic = critique.critic_name(settings)
    if critic is None:
        return 0
    if not settings.pools:
        return critique.critique_assets(asset_ids, settings)
    pool = next(name for name, pool in settings.pools.items() if critic in pool.scorers)
    return hand_critique_to_pool(asset_ids, pool, settings.pool_wait_seconds, result_storage_block(settings))


@task(name="hand-critique-to-pool")
def hand_critique_to_pool(asset_ids: list[int], pool: str, wait_seconds: float, result_storage: str | None) -> int:
    """Have pool `pool`'s workers critique a batch, and wait for them; returns how many critiques were written.

    A task of its own for the reason `aesq.tasks.score.hand_to_pools` is: what Prefect persists with the pool's task run holds
    ids and names, never the settings.
    """
    return pool_result(critique_pool_task(pool, result_storage=result_storage).delay(asset_ids), pool, wait_seconds)


def critique_pool_task(
    pool: str, worker: PoolWorker | None = None, result_storage: str | None = None
) -> Task[[list[int]], int]:
    """The critique task that pool `pool`'s workers serve when the critic is one of its scorers.

    Args:
        pool: scoring pool name from the settings.
        worker: the worker serving it (its settings and slot); None when only handing work over.
        result_storage: slug of the Prefect block the batch's parameters and result are kept in; None: local.

    Returns:
        A task keyed by the pool name, so only that pool's workers pick its runs up.
    """

    def critique_on_pool(asset_ids: list[int]) -> int:
        """Critique one batch with this pool's critic, holding the worker's slot while it generates."""
        serving = PoolWorker.serving(worker, pool)
        return critique.critique_assets(asset_ids, serving.settings, model_slot=serving.slot)

    return handed_over_task(critique_on_pool, f"critique-{pool}", pool, result_storage)
